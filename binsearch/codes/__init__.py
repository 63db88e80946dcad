"""The code format's producers: the quantizer core, the codecs, their fitting and training.

Every codec speaks the :class:`binsearch.codes.codecs.Codec` protocol (``encode``,
``encode_queries``, ``metric``) and writes the code format of :mod:`index.codes`.
"""
