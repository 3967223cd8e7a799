"""The client's facades: one per analysis (or family), each a few methods over its :mod:`zfnet.wire`
module. :class:`zfnet.client.api.Client` is all of them over one connection."""
