"""The local pages, served with FastAPI on 127.0.0.1: the ranking page where a person judges stories in a browser."""
