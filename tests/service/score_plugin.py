"""An operator's plug-in module, as ``dynams serve --models tests.service.score_plugin``
loads it: one function and one ``register_score`` call make a new score."""

from dynams_service.core.selection.scores import register_score


def true_logit(proxy, inputs, labels):
    """The proxy's logit of the true class: the least convinced samples come first."""
    return proxy.logits(inputs).gather(1, labels[:, None]).squeeze(1)


register_score("true-logit", true_logit)
