//! Byte-level BPE tokenizer (HF `tokenizers`): load, train, save, chat templates.
//!
//! [`Tokenizer`] wraps an HF `tokenizer.json`: the file shipped with a pretrained Qwen2 / Llama 3
//! checkpoint, or one trained here with [`Tokenizer::train_bpe`] for the built-in small model. The
//! trained tokenizer is a byte-level BPE in the style of GPT-2 and Qwen2 (Qwen2's split regex, then
//! the byte-to-unicode mapping), so every string round-trips and the Python `tokenizers` library
//! loads the saved file as is.
//!
//! Chat templating covers the two formats the supported models were tuned with: ChatML (Qwen2 and our
//! own tokenizer) and Llama 3. Prompts are assembled from special-token ids and separately encoded
//! text segments cut only at special tokens, which yields exactly the ids that tokenizing the rendered
//! template string gives.

use std::path::{Path, PathBuf};

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

/// End of a document; also the padding token of the trained tokenizer.
pub const END_OF_TEXT: &str = "<|endoftext|>";
/// ChatML: opens a message, followed by the role name and a newline.
pub const IM_START: &str = "<|im_start|>";
/// ChatML: closes a message; ends the assistant's turn.
pub const IM_END: &str = "<|im_end|>";
/// Llama 3: beginning of the sequence.
pub const BEGIN_OF_TEXT: &str = "<|begin_of_text|>";
/// Llama 3: opens a role header.
pub const START_HEADER: &str = "<|start_header_id|>";
/// Llama 3: closes a role header.
pub const END_HEADER: &str = "<|end_header_id|>";
/// Llama 3: ends a message; ends the assistant's turn.
pub const EOT: &str = "<|eot_id|>";
/// Llama 3: end of a document.
pub const LLAMA_END_OF_TEXT: &str = "<|end_of_text|>";
/// Llama 3.1: ends a message that calls a tool; also stops generation.
pub const EOM: &str = "<|eom_id|>";
/// Llama 3.1: the padding token reserved for fine-tuning.
pub const LLAMA_PAD: &str = "<|finetune_right_pad_id|>";

/// The special tokens of a trained tokenizer, in id order (ids 0, 1, 2).
pub const TRAINED_SPECIAL_TOKENS: [&str; 3] = [END_OF_TEXT, IM_START, IM_END];

/// Qwen2's pre-tokenization regex: contractions, letter runs with at most one leading
/// non-letter, single digits, punctuation runs, newlines, other whitespace.
const SPLIT_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Merges seen fewer times than this in the training corpus are not learned.
const MIN_MERGE_FREQUENCY: u64 = 2;

/// Number of byte symbols every byte-level vocabulary starts from.
const BYTE_ALPHABET_SIZE: usize = 256;

/// What can go wrong loading, training or saving a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The tokenizer file could not be read.
    #[error("cannot read tokenizer file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying IO error.
        #[source]
        source: std::io::Error,
    },
    /// The tokenizer file is not a valid HF `tokenizer.json`.
    #[error("cannot parse tokenizer file {}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What `tokenizers` reported.
        #[source]
        source: tokenizers::Error,
    },
    /// The tokenizer could not be serialized to JSON.
    #[error("cannot serialize the tokenizer")]
    Serialize {
        /// What `tokenizers` reported.
        #[source]
        source: tokenizers::Error,
    },
    /// The tokenizer file could not be written.
    #[error("cannot write tokenizer file {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying IO error.
        #[source]
        source: std::io::Error,
    },
    /// BPE training failed.
    #[error("BPE training failed")]
    Train {
        /// What `tokenizers` reported.
        #[source]
        source: tokenizers::Error,
    },
    /// The requested vocabulary cannot hold the byte alphabet and the special tokens.
    #[error("vocabulary size {requested} is below the minimum {minimum} (256 bytes and the special tokens)")]
    VocabTooSmall {
        /// The requested size.
        requested: usize,
        /// The smallest size allowed.
        minimum: usize,
    },
    /// The vocabulary has the special tokens of no supported chat format.
    #[error(
        "tokenizer has no supported chat format: neither ChatML ({IM_START}, {IM_END}) nor Llama 3 \
         ({START_HEADER}, {END_HEADER}, {EOT}) special tokens"
    )]
    NoChatTemplate,
}

/// The chat format a tokenizer's model was tuned with, detected from its special tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChatTemplate {
    /// `<|im_start|>role\n...<|im_end|>\n`: Qwen2 / Qwen2.5 and the tokenizer trained here.
    ChatMl,
    /// `<|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>`: Llama 3.
    Llama3,
}

/// Special-token ids the chat template needs, resolved once at load.
#[derive(Debug, Clone)]
enum TemplateIds {
    ChatMl {
        im_start: u32,
        im_end: u32,
    },
    Llama3 {
        begin_of_text: Option<u32>,
        start_header: u32,
        end_header: u32,
        eot: u32,
    },
}

/// A byte-level BPE tokenizer with a chat template.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    template: TemplateIds,
    vocab_size: usize,
    pad_id: u32,
    stop_ids: Vec<u32>,
    /// [`Tokenizer::token_texts`], computed on first use.
    texts: std::sync::OnceLock<crate::strict::TokenTexts>,
}

impl Tokenizer {
    /// Loads an HF `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        let bytes = std::fs::read(path).map_err(|source| TokenizerError::Read {
            path: path.to_owned(),
            source,
        })?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|source| TokenizerError::Parse {
            path: path.to_owned(),
            source,
        })?;
        Self::new(inner)
    }

    /// Loads `tokenizer.json` from an HF model directory.
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        Self::from_file(&dir.join("tokenizer.json"))
    }

    /// Trains a byte-level BPE on `corpus` with at most `vocab_size` tokens, counting the special
    /// tokens [`TRAINED_SPECIAL_TOKENS`] (ids 0, 1, 2) and the 256 byte symbols.
    ///
    /// Deterministic: the same corpus and size give the same vocabulary, merges and saved file. A
    /// small corpus may yield fewer tokens than asked; [`Tokenizer::vocab_size`] tells the real size.
    /// Special-token strings inside the corpus are kept whole and never merged into other tokens.
    pub fn train_bpe<I, S>(corpus: I, vocab_size: usize) -> Result<Self, TokenizerError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let minimum = BYTE_ALPHABET_SIZE + TRAINED_SPECIAL_TOKENS.len();
        if vocab_size < minimum {
            return Err(TokenizerError::VocabTooSmall {
                requested: vocab_size,
                minimum,
            });
        }
        let specials: Vec<AddedToken> = TRAINED_SPECIAL_TOKENS
            .iter()
            .map(|token| AddedToken::from(*token, true))
            .collect();

        let split = Split::new(
            SplitPattern::Regex(SPLIT_PATTERN.to_owned()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|source| TokenizerError::Train { source })?;
        let byte_level = ByteLevel::new(false, false, false);
        let mut inner = tokenizers::Tokenizer::new(BPE::default());
        inner
            .with_pre_tokenizer(Some(Sequence::new(vec![split.into(), byte_level.into()])))
            .with_decoder(Some(ByteLevelDecoder::new(false, false, false)));

        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(MIN_MERGE_FREQUENCY)
            .show_progress(false)
            .special_tokens(specials)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build()
            .into();
        // The trainer would learn merges inside special-token strings found in the corpus: they are
        // cut out, and the text around them trained on as separate sequences. `tokenizers` also
        // wants a `Send` iterator, hence owned pieces.
        let texts: Vec<String> = corpus
            .into_iter()
            .flat_map(|text| {
                between_special_tokens(text.as_ref())
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        inner
            .train(&mut trainer, texts.iter())
            .map_err(|source| TokenizerError::Train { source })?;
        Self::new(inner)
    }

    /// Saves the tokenizer as an HF `tokenizer.json` (loadable by the Python `tokenizers` library).
    pub fn save(&self, path: &Path) -> Result<(), TokenizerError> {
        let json = self
            .inner
            .to_string(true)
            .map_err(|source| TokenizerError::Serialize { source })?;
        std::fs::write(path, json).map_err(|source| TokenizerError::Write {
            path: path.to_owned(),
            source,
        })
    }

    fn new(inner: tokenizers::Tokenizer) -> Result<Self, TokenizerError> {
        let id = |token: &str| inner.token_to_id(token);
        let template = match (
            id(START_HEADER),
            id(END_HEADER),
            id(EOT),
            id(IM_START),
            id(IM_END),
        ) {
            (Some(start_header), Some(end_header), Some(eot), _, _) => TemplateIds::Llama3 {
                begin_of_text: id(BEGIN_OF_TEXT),
                start_header,
                end_header,
                eot,
            },
            (_, _, _, Some(im_start), Some(im_end)) => TemplateIds::ChatMl { im_start, im_end },
            _ => return Err(TokenizerError::NoChatTemplate),
        };
        let end_of_turn = match template {
            TemplateIds::ChatMl { im_end, .. } => im_end,
            TemplateIds::Llama3 { eot, .. } => eot,
        };
        let mut stop_ids = vec![end_of_turn];
        for token in [IM_END, END_OF_TEXT, EOT, EOM, LLAMA_END_OF_TEXT] {
            if let Some(stop) = id(token)
                && !stop_ids.contains(&stop)
            {
                stop_ids.push(stop);
            }
        }
        let pad_id = [END_OF_TEXT, LLAMA_PAD, LLAMA_END_OF_TEXT]
            .into_iter()
            .find_map(id)
            .unwrap_or(end_of_turn);
        let vocab_size = inner
            .get_vocab(true)
            .into_values()
            .max()
            .map_or(0, |max| max as usize + 1);
        Ok(Self {
            inner,
            template,
            vocab_size,
            pad_id,
            stop_ids,
            texts: std::sync::OnceLock::new(),
        })
    }

    /// Token ids of `text`, without added special tokens (no BOS). Special-token strings inside
    /// `text` (such as `<|im_end|>`) are recognised and become their single ids.
    ///
    /// Encoding fails only in corner cases of loaded tokenizers (a split regex hitting its
    /// backtracking limit); the text is then encoded character by character, dropping what still
    /// fails, so that the caller always gets ids for what could be encoded.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        match self.try_encode(text) {
            Ok(ids) => ids,
            Err(_) => {
                let mut buffer = [0u8; 4];
                text.chars()
                    .filter_map(|c| self.try_encode(c.encode_utf8(&mut buffer)).ok())
                    .flatten()
                    .collect()
            }
        }
    }

    /// Token ids of `text` as [`Tokenizer::encode`], or the error `tokenizers` reported.
    pub fn try_encode(&self, text: &str) -> Result<Vec<u32>, tokenizers::Error> {
        Ok(self.inner.encode_fast(text, false)?.get_ids().to_vec())
    }

    /// The text of `ids`, skipping special tokens and ids outside the vocabulary. Byte sequences that
    /// are not valid UTF-8 (a generation cut in the middle of a character) become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, true).unwrap_or_else(|_| {
            ids.iter()
                .filter_map(|&id| self.inner.decode(&[id], true).ok())
                .collect()
        })
    }

    /// The text of each token id on its own, indexed by id: `None` for special tokens and for
    /// tokens that are not whole UTF-8 characters by themselves. What guided decoding
    /// ([`crate::strict`]) appends to a completion when it tries a token. Computed once per
    /// tokenizer and shared.
    pub fn token_texts(&self) -> crate::strict::TokenTexts {
        self.texts
            .get_or_init(|| {
                let texts = (0..self.vocab_size as u32)
                    .map(|id| {
                        let text = self.inner.decode(&[id], true).ok()?;
                        (!text.is_empty() && !text.contains('\u{FFFD}')).then_some(text)
                    })
                    .collect();
                std::sync::Arc::new(texts)
            })
            .clone()
    }

    /// One more than the largest token id: the number of rows an embedding table needs. A
    /// pretrained model's embedding may be larger (Qwen2.5 pads it), never smaller.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The id used to pad batches: `<|endoftext|>` when present, else Llama 3's padding or
    /// end-of-text token.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Ids that end an assistant turn, the template's end-of-turn token first: `<|im_end|>`,
    /// `<|endoftext|>`, Llama 3's `<|eot_id|>`, `<|eom_id|>`, `<|end_of_text|>`, those present.
    pub fn stop_ids(&self) -> Vec<u32> {
        self.stop_ids.clone()
    }

    /// The token that [`Tokenizer::completion`] appends: `<|im_end|>` or `<|eot_id|>`.
    pub fn end_of_turn_id(&self) -> u32 {
        self.stop_ids[0]
    }

    /// The id of a token string (including special tokens), if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The chat format, detected from the special tokens.
    pub fn template(&self) -> ChatTemplate {
        match self.template {
            TemplateIds::ChatMl { .. } => ChatTemplate::ChatMl,
            TemplateIds::Llama3 { .. } => ChatTemplate::Llama3,
        }
    }

    /// The prompt for one system and one user message, ending with the assistant's header, ready
    /// for generation.
    ///
    /// ChatML: `<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n`.
    /// Llama 3: `<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>`
    /// then the same for `user`, then `<|start_header_id|>assistant<|end_header_id|>\n\n`.
    pub fn chat_prompt(&self, system: &str, user: &str) -> Vec<u32> {
        let mut ids = Vec::with_capacity(16 + (system.len() + user.len()) / 3);
        match self.template {
            TemplateIds::ChatMl { im_start, im_end } => {
                for (role, content) in [("system", system), ("user", user)] {
                    ids.push(im_start);
                    ids.extend(self.encode(&format!("{role}\n{content}")));
                    ids.push(im_end);
                    ids.extend(self.encode("\n"));
                }
                ids.push(im_start);
                ids.extend(self.encode("assistant\n"));
            }
            TemplateIds::Llama3 {
                begin_of_text,
                start_header,
                end_header,
                eot,
            } => {
                ids.extend(begin_of_text);
                for (role, content) in [("system", system), ("user", user)] {
                    ids.push(start_header);
                    ids.extend(self.encode(role));
                    ids.push(end_header);
                    ids.extend(self.encode(&format!("\n\n{content}")));
                    ids.push(eot);
                }
                ids.push(start_header);
                ids.extend(self.encode("assistant"));
                ids.push(end_header);
                ids.extend(self.encode("\n\n"));
            }
        }
        ids
    }

    /// The assistant's `text` followed by the end-of-turn token (`<|im_end|>` or `<|eot_id|>`): what
    /// supervised fine-tuning trains on after [`Tokenizer::chat_prompt`], and what generation
    /// should produce.
    pub fn completion(&self, text: &str) -> Vec<u32> {
        let mut ids = self.encode(text);
        ids.push(self.end_of_turn_id());
        ids
    }

    /// The underlying HF tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// The non-empty pieces of `text` between occurrences of [`TRAINED_SPECIAL_TOKENS`].
fn between_special_tokens(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        loop {
            let current = rest?;
            let next = TRAINED_SPECIAL_TOKENS
                .iter()
                .filter_map(|special| current.find(special).map(|at| (at, at + special.len())))
                .min();
            let piece = match next {
                Some((start, end)) => {
                    rest = Some(&current[end..]);
                    &current[..start]
                }
                None => {
                    rest = None;
                    current
                }
            };
            if !piece.is_empty() {
                return Some(piece);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn corpus() -> Vec<String> {
        let names = ["Alice", "Bob", "Chloé", "Dmitri", "Zoë"];
        let cities = ["Lyon", "Paris", "Kraków", "São Paulo", "Zürich", "東京"];
        let jobs = ["a chef", "a nurse", "an engineer", "a teacher", "a pilot"];
        let mut lines = Vec::new();
        for (i, name) in names.iter().enumerate() {
            for (j, city) in cities.iter().enumerate() {
                let job = jobs[(i + j) % jobs.len()];
                lines.push(format!(
                    "D{i}:{j} {name}: I moved to {city} last year and I work as {job}."
                ));
                lines.push(format!(
                    "{{\"facts\":[{{\"speaker\":\"{name}\",\"dia_id\":\"D{i}:{j}\",\"fact\":\"{name} lives in {city}\"}}]}}"
                ));
                lines.push(format!(
                    "{IM_START}user\nWhere does {name} live?{IM_END}\n{city}{END_OF_TEXT}"
                ));
            }
        }
        lines
    }

    fn trained() -> Tokenizer {
        Tokenizer::train_bpe(corpus(), 400).expect("training succeeds")
    }

    #[test]
    fn tokenizer_round_trips_ascii_and_unicode() {
        let tokenizer = trained();
        for text in [
            "Alice moved to Lyon.",
            "  leading spaces,\ttabs\nand newlines\n\n",
            "Chloé lives in Kraków; 東京 is far 🚀 — ok?",
            "{\"facts\":[]}",
            "",
        ] {
            let ids = tokenizer.encode(text);
            assert_eq!(tokenizer.decode(&ids), text);
        }
    }

    #[test]
    fn token_texts_concatenate_to_the_decoded_text() {
        let tokenizer = trained();
        let texts = tokenizer.token_texts();
        assert_eq!(texts.len(), tokenizer.vocab_size());
        for (id, text) in texts.iter().enumerate().take(TRAINED_SPECIAL_TOKENS.len()) {
            assert_eq!(*text, None, "special token {id}");
        }
        let text = "{\"name\":\"move\",\"arguments\":{\"to\":\"Lyon\",\"n\":12}}";
        let joined: String = tokenizer
            .encode(text)
            .iter()
            .map(|&id| texts[id as usize].clone().expect("ASCII tokens have a text"))
            .collect();
        assert_eq!(joined, text);
    }

    #[test]
    fn tokenizer_learns_merges_up_to_the_requested_size() {
        let tokenizer = trained();
        assert!(tokenizer.vocab_size() > BYTE_ALPHABET_SIZE + 3);
        assert!(tokenizer.vocab_size() <= 400);
        let text = "Alice moved to Lyon";
        assert!(tokenizer.encode(text).len() < text.len());
    }

    #[test]
    fn tokenizer_special_tokens_are_single_ids() {
        let tokenizer = trained();
        for (expected, token) in TRAINED_SPECIAL_TOKENS.iter().enumerate() {
            assert_eq!(tokenizer.encode(token), vec![expected as u32]);
            assert_eq!(tokenizer.token_id(token), Some(expected as u32));
        }
        let ids = tokenizer.encode("Lyon<|im_end|>Paris");
        assert!(ids.contains(&2));
        assert_eq!(tokenizer.decode(&ids), "LyonParis");
        assert_eq!(tokenizer.pad_id(), 0);
        assert_eq!(tokenizer.stop_ids(), vec![2, 0]);
        assert_eq!(tokenizer.end_of_turn_id(), 2);
        assert_eq!(tokenizer.template(), ChatTemplate::ChatMl);
        // The corpus holds special-token strings; no learned token contains a piece of one.
        let vocab = tokenizer.inner().get_vocab(false);
        let pieces: Vec<&String> = vocab
            .keys()
            .filter(|token| !TRAINED_SPECIAL_TOKENS.contains(&token.as_str()))
            .filter(|token| token.contains("im_") || token.contains("|>"))
            .collect();
        assert!(pieces.is_empty(), "{pieces:?}");
    }

    #[test]
    fn tokenizer_save_load_round_trip() {
        let dir = tempfile::tempdir().expect("temp dir");
        let tokenizer = trained();
        tokenizer.save(&dir.path().join("tokenizer.json")).expect("save");
        let loaded = Tokenizer::from_dir(dir.path()).expect("load");
        let text = "Zoë works as a pilot in Zürich.";
        assert_eq!(loaded.encode(text), tokenizer.encode(text));
        assert_eq!(loaded.vocab_size(), tokenizer.vocab_size());
        assert_eq!(loaded.stop_ids(), tokenizer.stop_ids());
        assert_eq!(loaded.chat_prompt("s", "u"), tokenizer.chat_prompt("s", "u"));
    }

    #[test]
    fn tokenizer_training_is_deterministic() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
        trained().save(&a).expect("save a");
        trained().save(&b).expect("save b");
        let a = std::fs::read(a).expect("read a");
        assert_eq!(a, std::fs::read(b).expect("read b"));
    }

    #[test]
    fn tokenizer_corpus_is_cut_at_special_tokens() {
        let pieces: Vec<&str> =
            between_special_tokens("<|im_start|>user\nHi<|im_end|><|endoftext|>x").collect();
        assert_eq!(pieces, vec!["user\nHi", "x"]);
        assert_eq!(between_special_tokens("").count(), 0);
        assert_eq!(between_special_tokens("plain").collect::<Vec<_>>(), vec!["plain"]);
    }

    #[test]
    fn tokenizer_missing_file_names_the_path() {
        let err = Tokenizer::from_file(Path::new("/nonexistent/dir/tokenizer.json")).unwrap_err();
        assert!(matches!(err, TokenizerError::Read { .. }));
        assert!(err.to_string().contains("/nonexistent/dir/tokenizer.json"));
    }

    #[test]
    fn tokenizer_corrupt_file_is_a_parse_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, "{\"model\": 3").expect("write");
        let err = Tokenizer::from_file(&path).unwrap_err();
        assert!(matches!(err, TokenizerError::Parse { .. }), "{err:?}");
    }

    #[test]
    fn tokenizer_rejects_a_vocabulary_below_the_byte_alphabet() {
        let err = Tokenizer::train_bpe(["abc"], 100).unwrap_err();
        assert!(matches!(
            err,
            TokenizerError::VocabTooSmall {
                requested: 100,
                minimum: 259
            }
        ));
    }

    #[test]
    fn tokenizer_without_chat_tokens_is_rejected() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tokenizer.json");
        let plain = tokenizers::Tokenizer::new(BPE::default());
        plain.save(&path, false).expect("save");
        assert!(matches!(
            Tokenizer::from_file(&path),
            Err(TokenizerError::NoChatTemplate)
        ));
    }

    #[test]
    fn tokenizer_chat_prompt_matches_the_rendered_template() {
        let tokenizer = trained();
        let (system, user) = ("Extract facts.", "date: 8 May 2023\nD1:1 Alice: I moved to Lyon.");
        let prompt = tokenizer.chat_prompt(system, user);
        let rendered = format!(
            "{IM_START}system\n{system}{IM_END}\n{IM_START}user\n{user}{IM_END}\n{IM_START}assistant\n"
        );
        assert_eq!(prompt, tokenizer.encode(&rendered));
        assert_eq!(prompt[0], 1);
        assert_eq!(prompt.iter().filter(|&&id| id == 1).count(), 3);
        assert_eq!(prompt.iter().filter(|&&id| id == 2).count(), 2);
        assert_eq!(
            tokenizer.decode(&prompt),
            format!("system\n{system}\nuser\n{user}\nassistant\n")
        );

        let completion = tokenizer.completion("{\"facts\":[]}");
        assert_eq!(completion.last(), Some(&2));
        let mut whole = prompt.clone();
        whole.extend(&completion);
        assert_eq!(
            whole,
            tokenizer.encode(&format!("{rendered}{{\"facts\":[]}}{IM_END}"))
        );
    }

    /// A minimal Llama 3 style `tokenizer.json`: byte-level BPE with the Llama 3 header tokens.
    fn llama3_like() -> Tokenizer {
        let mut inner = trained().inner().clone();
        let specials: Vec<AddedToken> = [BEGIN_OF_TEXT, LLAMA_END_OF_TEXT, START_HEADER, END_HEADER, EOT]
            .iter()
            .map(|token| AddedToken::from(*token, true))
            .collect();
        inner.add_special_tokens(&specials);
        Tokenizer::new(inner).expect("llama 3 template detected")
    }

    #[test]
    fn tokenizer_llama3_template() {
        let tokenizer = llama3_like();
        assert_eq!(tokenizer.template(), ChatTemplate::Llama3);
        let eot = tokenizer.token_id(EOT).expect("eot");
        assert_eq!(tokenizer.end_of_turn_id(), eot);
        assert!(
            tokenizer
                .stop_ids()
                .contains(&tokenizer.token_id(LLAMA_END_OF_TEXT).expect("eos"))
        );
        assert_eq!(tokenizer.pad_id(), 0);
        let (system, user) = ("Answer briefly.", "question: where?");
        let rendered = format!(
            "{BEGIN_OF_TEXT}{START_HEADER}system{END_HEADER}\n\n{system}{EOT}{START_HEADER}user{END_HEADER}\n\n\
             {user}{EOT}{START_HEADER}assistant{END_HEADER}\n\n"
        );
        let prompt = tokenizer.chat_prompt(system, user);
        assert_eq!(prompt, tokenizer.encode(&rendered));
        assert_eq!(prompt[0], tokenizer.token_id(BEGIN_OF_TEXT).expect("bos"));
        assert_eq!(tokenizer.completion("Lyon").last(), Some(&eot));
    }

    fn shared() -> &'static Tokenizer {
        static SHARED: std::sync::OnceLock<Tokenizer> = std::sync::OnceLock::new();
        SHARED.get_or_init(trained)
    }

    proptest! {
        #[test]
        fn tokenizer_round_trips_any_string(text in "\\PC{0,64}") {
            let tokenizer = shared();
            let ids = tokenizer.encode(&text);
            prop_assert_eq!(tokenizer.decode(&ids), text);
        }
    }
}
