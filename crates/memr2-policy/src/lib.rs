//! The transformer backbone that plays every role of the memory agent.
