//! Role prompts (fact extractor, memory manager, answerer) and their output parsers.
