"""A small sweep of the knowledge-neurons editor's layers and insertion scale on MQuAKE rewrites.

The knowledge neurons of each rewrite are found once per layer set (the expensive part); each insertion
scale is then applied and undone in turn. Efficacy: the new target's first token becomes the model's top
prediction for the edit prompt. Locality: the share of other rewrites' prompts whose top prediction stays.

Run:
    python benchmarks/kn_sweep.py --data-path mquake-cf-dev.json --num-edits 6 --layers 24,25,26,27,28,29
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from serac.data import load_mquake
from serac.editors.base import target_token_ids, token_ids
from serac.editors.keys import generate_context_templates
from serac.editors.knowledge_neurons import KNConfig, find_knowledge_neurons
from serac.editors.layout import get_layout, get_module, weight_as_out_in
from serac.offline import load_base_model

logger = logging.getLogger(__name__)

SCALES = (4.0, 8.0, 16.0, 32.0, 64.0)
LOCALITY_PROMPTS = 10


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-path", required=True)
    parser.add_argument("--num-edits", type=int, default=6)
    parser.add_argument("--layers", required=True, help="comma list of blocks")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(arguments.threads)
    model, tokenizer = load_base_model()
    layout = get_layout(model)
    layers = [int(layer) for layer in arguments.layers.split(",")]
    config = KNConfig(layers=tuple(layers), steps=arguments.steps, context_templates=((5, 2),))
    examples = load_mquake(arguments.data_path)
    edits = [example.edit for example in examples[: arguments.num_edits]]
    others = [example.edit.query for example in examples[arguments.num_edits :][:LOCALITY_PROMPTS]]
    templates = generate_context_templates(model, tokenizer, config.context_templates)
    embedding = get_module(model, layout.lm_head).weight.detach()

    def top_token(query: str) -> int:
        with torch.no_grad():
            return int(model(input_ids=torch.tensor([token_ids(tokenizer, query)])).logits[0, -1].argmax())

    unedited = [top_token(query) for query in others]
    found = []
    for edit in tqdm(edits, desc="attribution"):
        old, new = top_token(edit.query), target_token_ids(tokenizer, edit.query, edit.target)[0]
        prompts = [token_ids(tokenizer, template.replace("{}", edit.query)) for template in templates]
        neurons = find_knowledge_neurons(model, prompts, old, layers, layout, config)
        found.append((old, new, neurons))
        logger.info(
            "%s | %r -> %r: %s", edit.query, tokenizer.decode([old]), tokenizer.decode([new]), neurons
        )
    for scale in SCALES:
        efficacy, locality = [], []
        for edit, (old, new, neurons) in zip(edits, found, strict=True):
            saved = {}
            with torch.no_grad():
                delta = (
                    scale * embedding[new] / embedding[new].norm() - embedding[old] / embedding[old].norm()
                )
                for layer, neuron, _ in neurons:
                    weight = weight_as_out_in(
                        get_module(model, layout.down_proj.format(layer)).weight, layout
                    )
                    saved[(layer, neuron)] = weight[:, neuron].clone()
                    weight[:, neuron] += delta
            efficacy.append(top_token(edit.query) == new)
            locality.append(
                sum(top_token(q) == u for q, u in zip(others, unedited, strict=True)) / len(others)
            )
            with torch.no_grad():
                for (layer, neuron), column in saved.items():
                    weight_as_out_in(get_module(model, layout.down_proj.format(layer)).weight, layout)[
                        :, neuron
                    ] = column
        logger.info(
            "layers %s insert_scale %g: efficacy %.2f locality %.2f",
            layers,
            scale,
            sum(efficacy) / len(efficacy),
            sum(locality) / len(locality),
        )


if __name__ == "__main__":
    main()
