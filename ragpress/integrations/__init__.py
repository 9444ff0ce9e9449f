"""Framework integrations (LangChain)."""
