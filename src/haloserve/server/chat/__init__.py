"""The chat serving: tool calling, structured output, reasoning and the assembly of a chat reply."""
