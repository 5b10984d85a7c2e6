from common.process import die_with_parent

die_with_parent()  # a child of the service (a background training or fine-tune) dies with it; before the imports

from llm4rec.cli import app  # noqa: E402

app()
