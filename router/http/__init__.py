"""The HTTP/JSON edge: the Open Inference Protocol's REST binding and tensorgate's own API
transcoded from its `google.api.http` annotations, on one HTTP/1.1 server."""
