"""The local pages, served with FastAPI on 127.0.0.1: the ranking page where a person judges stories, and the story
playground where stories stream from a model as they are written."""
