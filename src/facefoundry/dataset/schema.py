"""Arrow schema of image rows, with the ``huggingface`` features metadata that makes
``datasets.load_dataset("parquet", ...)`` decode the ``image`` column to PIL images."""

from __future__ import annotations

import json

import pyarrow as pa

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

# Columns every shard starts with; stages append their score columns after these.
BASE_FIELDS = [
    pa.field("image", IMAGE_TYPE),
    pa.field("identity", pa.int64()),
    pa.field("image_index", pa.int32()),
    pa.field("seed", pa.int64()),
]
FACEFOUNDRY_KEY = b"facefoundry"


def with_hf_metadata(schema: pa.Schema, extra: dict | None = None) -> pa.Schema:
    """``schema`` with the Hugging Face features metadata (image column typed as Image) and
    ``extra`` (model ids, thresholds, config hash) stored under the ``facefoundry`` key."""
    import datasets  # heavy import: only where shards are written

    features = datasets.Features.from_arrow_schema(schema.remove_metadata())
    features["image"] = datasets.Image()
    metadata = dict(features.arrow_schema.metadata)
    if extra is not None:
        metadata[FACEFOUNDRY_KEY] = json.dumps(extra, sort_keys=True).encode()
    return schema.with_metadata(metadata)


def image_struct(data: list[bytes], paths: list[str]) -> pa.StructArray:
    return pa.StructArray.from_arrays(
        [pa.array(data, pa.binary()), pa.array(paths, pa.string())], fields=list(IMAGE_TYPE)
    )
