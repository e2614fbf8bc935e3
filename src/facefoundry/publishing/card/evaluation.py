"""The card's evaluation section: the judge's intrinsic metrics and train-then-verify accuracies, when measured."""

from __future__ import annotations

import json

from facefoundry.evaluate.anchors import anchors_table_markdown
from facefoundry.evaluate.intrinsic import intrinsic_table_markdown
from facefoundry.evaluate.intrinsic_run import INTRINSIC_FILE
from facefoundry.evaluate.train_verify import groups_table_markdown, read_results, results_table_markdown
from facefoundry.layout import EVAL_DIR
from facefoundry.publishing.card.context import CardContext


def evaluation(ctx: CardContext) -> list[str]:
    run_dir = ctx.facts.run_dir
    lines = ["## Evaluation\n", "What this dataset is worth as training data, as measured by `facefoundry evaluate` "
             "(`docs/evaluation.md` in facefoundry explains each figure).\n"]
    intrinsic_path = run_dir / EVAL_DIR / INTRINSIC_FILE
    if intrinsic_path.is_file():
        result = json.loads(intrinsic_path.read_text())
        lines += ["### Independent judge (no training)\n",
                  "Metrics of the kept images under a face model that is not the generator's conditioning encoder "
                  f"(`facefoundry evaluate --intrinsic`; full results in `{EVAL_DIR}/{INTRINSIC_FILE}`):\n",
                  intrinsic_table_markdown(result)]
    results = read_results(run_dir)
    table = results_table_markdown(results)
    if table:
        lines += ["### Train then verify\n",
                  "Verification accuracy (%, 10-fold, image + flip) of a face recognition model trained on this "
                  f"dataset (`facefoundry evaluate --train`; recipes and folds in `{EVAL_DIR}/<name>.json`):\n",
                  table + "\n",
                  "Published results of other training sets, for comparison (different recipes move these figures by "
                  "about 2 points):\n",
                  anchors_table_markdown() + "\n"]
    groups = groups_table_markdown(results)
    if groups:
        lines += ["### Per-group verification\n",
                  "Accuracy (%) of the trained model on each group of a balanced evaluation set (export-pairs "
                  "`--cells`, or one `.bin` per group as in RFW), the mean ± standard deviation over the groups and "
                  "the gap between the best and the worst group (lower is fairer):\n",
                  groups + "\n"]
    if len(lines) == 2:
        lines.append("Not evaluated yet: `facefoundry evaluate RUN --intrinsic` measures the set with an independent "
                     "judge, `--train configs/evaluate.yaml --benchmarks DIR` trains and verifies a model on it.\n")
    return lines
