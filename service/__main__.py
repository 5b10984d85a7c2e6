"""`python -m service`: the REST service on the settings from the environment (RECSYS_...)."""

import uvicorn

from common.process import limit_malloc_arenas
from service.app import create_app

if __name__ == "__main__":
    limit_malloc_arenas()
    uvicorn.run(create_app(), host="127.0.0.1", port=8000)
