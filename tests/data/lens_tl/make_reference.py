"""Record TransformerLens's logit lens on the packaged SmolLM2 as the fixture `reference.json` that
tests/integration/test_lens_transformer_lens.py compares `/v1/analysis/lens` with (issue #32: a second reference
beside the plain transformers computation of tests/integration/test_lens.py).

TransformerLens 4.x dropped HookedTransformer (it boots a TransformerBridge instead); 3.9.0 is the last release
with `HookedTransformer.from_pretrained(..., hf_model=...)` and it accepts the service's transformers 5.x. It runs in
a reference venv of its own that borrows the service's torch and transformers (never in the project's locks):

    /work/wt/extras/.venv/bin/python -m venv /tmp/tlref/venv
    echo "$PWD/.venv/lib/python3.11/site-packages" > /tmp/tlref/venv/lib/python3.11/site-packages/project.pth
    /tmp/tlref/venv/bin/pip install --no-deps transformer-lens==3.9.0 beartype better-abc fancy-einsum jaxtyping \
        wadler-lindig typeguard "transformers-stream-generator<0.1"
    PYTHONPATH=. /tmp/tlref/venv/bin/python tests/data/lens_tl/make_reference.py

The model is the folder the worker converts the packaged GGUF to (workers.models.safetensors_dir), given to
TransformerLens as `hf_model` with no weight processing (fold_ln, center_writing_weights, center_unembed and
fold_value_biases off: the logits stay the model's own, which the script checks). SmolLM2 is not among
TransformerLens's official names: its config is read from that local folder (TransformerLens reads a folder's
config.json when given one) through a symlink whose name does not say "llama" (a name that does skips the config).

The lens: `cache.accumulated_resid()` (resid_pre of blocks 0..n-1, then the last block's resid_post), each through
`model.ln_final` (RMSNorm, recomputed per layer) and `model.unembed`. Entry L is transformers' hidden_states[L] for
L < n, and the final entry is hidden_states[n] before the final norm, which the lens then applies: so entry L is the
service's layer L at every L. Recorded per layer, for positions 1..T-1: the actual token's logprob and the top-5
ids and logprobs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import transformer_lens
import transformer_lens.loading_from_pretrained as loading
from transformer_lens import HookedTransformer
from transformers import AutoModelForCausalLM, AutoTokenizer

from workers.config import PACKAGED_MODELS, CommonSettings
from workers.models import safetensors_dir

HERE = Path(__file__).parent
MODEL = "smollm2-135m-instruct"
TEXT = "The Eiffel Tower is in Paris, the capital of France. It was finished in 1889 for the World's Fair."
TOP = 5


def main() -> None:
    folder, _ = safetensors_dir(PACKAGED_MODELS[MODEL], CommonSettings().data_dir)
    named = Path("/tmp/tlref/smollm2-135m-instruct")
    if not named.exists():
        named.symlink_to(folder)
    tokenizer = AutoTokenizer.from_pretrained(named)
    hf_model = AutoModelForCausalLM.from_pretrained(named).eval()
    loading.get_official_model_name = lambda name: name  # type: ignore[assignment]  # a local folder is its own name
    model = HookedTransformer.from_pretrained_no_processing(
        str(named), hf_model=hf_model, tokenizer=tokenizer, device="cpu", dtype=torch.float32
    )
    ids = tokenizer(TEXT).input_ids
    tokens = torch.tensor([ids])
    with torch.inference_mode():
        logits, cache = model.run_with_cache(tokens)
        own = hf_model(input_ids=tokens).logits
        gap = float((torch.log_softmax(logits, -1) - torch.log_softmax(own, -1)).abs().max())
        assert gap < 1e-4, gap  # TransformerLens runs the same model
        resid = cache.accumulated_resid(incl_mid=False, apply_ln=False)  # [n_layers + 1, 1, T, d]
        lens = torch.log_softmax(model.unembed(model.ln_final(resid[:, 0])), dim=-1)  # [n_layers + 1, T, V]
    targets = torch.tensor(ids[1:])
    layers = []
    for layer, rows in enumerate(lens):
        rows = rows[:-1]  # row i predicts token i + 1
        top = rows.topk(TOP, dim=-1)
        layers.append(
            {
                "layer": layer,
                "logprob": rows[torch.arange(len(targets)), targets].tolist(),
                "top_ids": top.indices.tolist(),
                "top_logprobs": top.values.tolist(),
            }
        )
    out = {
        "model": MODEL,
        "text": TEXT,
        "token_ids": ids,
        "transformer_lens": transformer_lens.__version__ if hasattr(transformer_lens, "__version__") else "3.9.0",
        "max_abs_logprob_gap_to_transformers": gap,
        "layers": layers,
    }
    (HERE / "reference.json").write_text(json.dumps(out) + "\n")
    print(f"{len(layers)} layers, {len(ids)} tokens, logits vs transformers {gap:.2e}", os.linesep, end="")


if __name__ == "__main__":
    main()
