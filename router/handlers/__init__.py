"""One module per OpenAI endpoint group; each handler is glue over the router's pieces."""
