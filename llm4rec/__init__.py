"""The `llm4rec` command line: the entry point that composes every other package."""
