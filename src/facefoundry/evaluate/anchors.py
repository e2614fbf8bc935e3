"""Published train-then-verify results to compare a run against (one definition; docs and card read it).

Each figure is the average verification accuracy (%) over LFW, CFP-FP, CPLFW, AgeDB-30 and CALFW of a face
recognition model trained on the set, as its source reports it. ``size`` is the training set's size where the source
compares at the usual 0.5M images (10K identities x 50 images; CASIA-WebFace: the real 0.49M set); the strongest
published synthetic sets are listed too, with their own sizes and recipes (see the source).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Anchor:
    system: str
    average: float
    source: str
    recipe: str
    size: str = "0.5M (10K x 50)"


ANCHORS = (
    Anchor("IDiff-Face", 88.20, "Boutros et al., ICCV 2023", "ResNet-50 + CosFace"),
    Anchor("HyperFace", 89.50, "Shahreza & Marcel, ICLR 2025", "see the source"),
    Anchor("DCFace", 89.56, "Kim et al., CVPR 2023", "IR-SE-50 + AdaFace"),
    Anchor("Arc2Face", 91.73, "Papantoniou et al., ECCV 2024", "see the source"),
    Anchor("Vec2Face (HSFace10K)", 92.00, "Wu et al., ICLR 2025", "IResNet-50 + ArcFace (configs/evaluate.yaml)"),
    Anchor("Vec2Face+", 93.89, "Wu et al., 2025 (Vec2Face+)", "see the source"),
    Anchor("CASIA-WebFace (real)", 94.79, "Yi et al., 2014 (data); Vec2Face comparison", "IResNet-50 + ArcFace",
           "0.49M (10.5K real)"),
    Anchor("VIGFace", 94.91, "Kim et al., 2024 (VIGFace)", "see the source", "see the source"),
    Anchor("VariFace", 95.67, "Yeung et al., 2024 (VariFace; RFW 93.66)",
           "see the source (CASIA-WebFace: 94.70 under it)", "see the source"),
)


def anchors_table_markdown() -> str:
    """The anchors as a Markdown table, best last (the same rows in docs/evaluation.md and the card)."""
    lines = ["| training set | images | avg of 5 sets (%) | source | recipe |", "|---|---|---|---|---|"]
    lines += [f"| {a.system} | {a.size} | {a.average:.2f} | {a.source} | {a.recipe} |" for a in ANCHORS]
    return "\n".join(lines)
