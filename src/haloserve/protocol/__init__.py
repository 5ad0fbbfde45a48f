"""OpenAI wire protocol: request models and server-sent events."""
