//! LoGo-GRPO: group construction, advantages and the policy-gradient objective.
