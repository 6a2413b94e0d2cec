"""`pawnet serve`: the web service. `app` holds the routes (`create_app`, `run`), `settings`
the one validated `ServeSettings`, `uploads` the reading of request bodies, `batcher` the
dynamic batching, `pages` the routes that label nothing, `drift` the drift monitor and
`metrics` the Prometheus metrics; `static/` is the web page."""
