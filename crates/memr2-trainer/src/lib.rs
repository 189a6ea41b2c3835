//! LoGo-GRPO training of memory-augmented agents: rollouts, rewards, curriculum, evaluation.
