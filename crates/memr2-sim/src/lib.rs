//! Multi-session conversation environments, oracle traces, LoCoMo, and scoring.
