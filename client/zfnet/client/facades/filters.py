"""GetFilters: a learned layer's weights."""

from __future__ import annotations

from pathlib import Path

from zfnet.client.models import Models
from zfnet.wire.common import LayerKey
from zfnet.wire.filters import Filters, FiltersRequest


class FiltersFacade(Models):
    def filters(self, model: str | Path, layer: LayerKey) -> Filters:
        """The filters of a convolutional or fully connected layer (a number names its block)."""
        return Filters.from_proto(self._call(self.stub.GetFilters, FiltersRequest(layer).to_proto(self.model_ref(model))))
