"""Knowledge neurons: find the FFN neurons that express a fact, then rewrite them (registry name
``"kn"``)."""

from serac.editors.knowledge_neurons.editor import (
    Attribution,
    KNConfig,
    KnowledgeNeuronsEditor,
    find_knowledge_neurons,
    neuron_attributions,
)

__all__ = [
    "Attribution",
    "KNConfig",
    "KnowledgeNeuronsEditor",
    "find_knowledge_neurons",
    "neuron_attributions",
]
