from llm4rec.cli import app

app()
