//! Byte-level BPE tokenizer (HF `tokenizers`): load, train, save, chat templates.
