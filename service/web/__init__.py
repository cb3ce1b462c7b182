"""The web room: what happens to a request before and around the answer (ASGI middleware and server fixes).

- `guards`: request checks before BentoML reads a body (media types, duplicate keys, CSV routing).
- `security`: the bearer token and the body-size limit; `open_paths`: what is answered without a token.
- `openapi`: the OpenAPI document completed with the real errors.
- `patches`: fixes to BentoML's and uvicorn's internals (guarded by source hashes).
- `logs`: one line per client error, the service's log format.
"""
