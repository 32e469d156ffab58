"""Pydantic models of the OpenAI wire types the server reads and writes."""
