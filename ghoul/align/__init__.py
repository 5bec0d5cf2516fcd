"""The feedback stage: judges pick the best of groups of stories, and the winners (or preferences) shape the model."""
