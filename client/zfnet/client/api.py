"""The Python client: ``Client`` is one connection (:mod:`zfnet.client.transport`: channel, TLS,
token, replicas, an in-process server) with the models it uploads (:mod:`zfnet.client.models`) and
one facade per analysis (:mod:`zfnet.client.facades`); every result is a type of :mod:`zfnet.wire`.

``Client()`` with no target starts the service in-process on a private Unix socket::

    with Client() as client:
        result = client.deconv("models/zfnet-cifar10.onnx", ["samples/cifar10/cat/0000.jpg"], layer=4)
"""

from __future__ import annotations

from zfnet.client.facades.attribution import AttributionFacade
from zfnet.client.facades.deconv import DeconvFacade
from zfnet.client.facades.evolution import EvolutionFacade
from zfnet.client.facades.features import FeaturesFacade
from zfnet.client.facades.filters import FiltersFacade
from zfnet.client.facades.perturbation import PerturbationFacade
from zfnet.client.facades.predict import PredictFacade
from zfnet.client.facades.visualise import VisualiseFacade


class Client(PredictFacade, DeconvFacade, AttributionFacade, VisualiseFacade, PerturbationFacade, EvolutionFacade, FeaturesFacade, FiltersFacade):
    """Talks to a zfnet server (see :class:`~zfnet.client.transport.Transport` for ``target`` and
    ``connection``): models and data sets, then predict, activations, deconv, filters, occlusion,
    invariance, correspondence, top, evolution, features, Grad-CAM, integrated gradients, SmoothGrad,
    input x gradient and feature visualisation."""
