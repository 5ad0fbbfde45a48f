"""OpenAI wire protocol shared by server and gateway: request models, SSE, error bodies, model cards."""
