"""The feedback stage: judges pick the best of groups of stories, and the winners (or preferences) shape the model.

One name across the package, its extra (`ghoul[feedback]`) and the docs ("the feedback loop", docs/feedback.md). Its
command keeps the seed's word, `ghoul rlhf` (reinforcement learning from human feedback), which is what people of the
field search for; its methods (winners, DPO, PPO, GRPO) have commands of their own.
"""
