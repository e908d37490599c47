"""The keyserver's REST routes, one module per resource, each with its OpenAPI fragments."""
