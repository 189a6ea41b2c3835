//! The LLM judges. J: a served model labels each answer CORRECT or WRONG against the task's
//! reference answer, with the judge prompt of Mem0's LoCoMo evaluation, which Memory-R1 and
//! Memory-R2 report as J; J is the fraction labelled CORRECT, per category. And, for the
//! drift environment, [`DeflectionJudge`]: a served model rates a tool call's deflection.

use std::collections::BTreeMap;

use memr2_openai::wire::{ChatMessage, ChatRequest};
use memr2_sim::Category;
use serde::{Deserialize, Serialize};

use crate::served::ServedModel;

/// The judge's instruction, with `{question}`, `{gold_answer}` and `{generated_answer}` to
/// fill (Mem0's LoCoMo evaluation prompt).
pub const JUDGE_PROMPT: &str = r#"Your task is to label an answer to a question as 'CORRECT' or 'WRONG'. You will be given the following data:
    (1) a question (posed by one user to another user),
    (2) a 'gold' (ground truth) answer,
    (3) a generated answer
which you will score as CORRECT/WRONG.

The point of the question is to ask about something one user should know about the other user based on their prior conversations.
The gold answer will usually be a concise and short answer that includes the referenced topic, for example:
Question: Do you remember what I got the last time I went to Hawaii?
Gold answer: A shell necklace
The generated answer might be much longer, but you should be generous with your grading - as long as it touches on the same topic as the gold answer, it should be counted as CORRECT.

For time related questions, the gold answer will be a specific date, month, year, etc. The generated answer might be much longer or use relative time references (like "last Tuesday" or "next month"), but you should be generous with your grading - as long as it refers to the same date or time period as the gold answer, it should be counted as CORRECT. Even if the format differs (e.g., "May 7th" vs "7 May"), consider it CORRECT if it's the same date.

Now it's time for the real question:
Question: {question}
Gold answer: {gold_answer}
Generated answer: {generated_answer}

First, provide a short (one sentence) explanation of your reasoning, then finish with CORRECT or WRONG.
Do NOT include both CORRECT and WRONG in your response, or it will break the evaluation script.

Just return the label CORRECT or WRONG in a json format with the key as "label"."#;

/// Most tokens the judge may write.
pub const JUDGE_MAX_TOKENS: u32 = 256;

/// One answer to judge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JudgeItem {
    /// The question (the probe's query).
    pub question: String,
    /// The reference answer.
    pub gold: String,
    /// What the answerer said.
    pub generated: String,
}

/// The judge's request for an item: greedy, the prompt as the user's message.
pub fn judge_request(item: &JudgeItem) -> ChatRequest {
    let prompt = JUDGE_PROMPT
        .replace("{question}", &item.question)
        .replace("{gold_answer}", &item.gold)
        .replace("{generated_answer}", &item.generated);
    ChatRequest {
        max_tokens: Some(JUDGE_MAX_TOKENS),
        temperature: Some(0.0),
        ..ChatRequest::new("", vec![ChatMessage::new("user", prompt)])
    }
}

/// The label of a judge's output: the `label` of a JSON object in it, else the one of CORRECT
/// and WRONG it names (the later, when it names both); `None` when it names neither.
pub fn parse_label(output: &str) -> Option<bool> {
    let from_json = output.match_indices('{').find_map(|(start, _)| {
        let end = output[start..].find('}')? + start;
        let value: serde_json::Value = serde_json::from_str(&output[start..=end]).ok()?;
        let label = value.get("label")?.as_str()?.trim().to_ascii_uppercase();
        match label.as_str() {
            "CORRECT" => Some(true),
            "WRONG" => Some(false),
            _ => None,
        }
    });
    from_json.or_else(|| {
        let upper = output.to_ascii_uppercase();
        match (upper.rfind("CORRECT"), upper.rfind("WRONG")) {
            (Some(c), Some(w)) => Some(c > w),
            (Some(_), None) => Some(true),
            (None, Some(_)) => Some(false),
            (None, None) => None,
        }
    })
}

/// J's counts for one group of answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JudgeSums {
    /// Answers the judge labelled.
    pub judged: usize,
    /// Labelled CORRECT.
    pub correct: usize,
    /// Answers the judge's output gave no label for (counted as WRONG in J).
    pub unlabelled: usize,
}

impl JudgeSums {
    /// J: the fraction labelled CORRECT, unlabelled answers counting as WRONG.
    pub fn j(&self) -> f64 {
        let n = self.judged + self.unlabelled;
        if n == 0 {
            0.0
        } else {
            self.correct as f64 / n as f64
        }
    }

    fn add(&mut self, label: Option<bool>) {
        match label {
            Some(correct) => {
                self.judged += 1;
                self.correct += usize::from(correct);
            }
            None => self.unlabelled += 1,
        }
    }
}

/// J per category.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JudgeBoard {
    /// Counts per category.
    pub per_category: BTreeMap<Category, JudgeSums>,
}

impl JudgeBoard {
    /// Records a label under a category.
    pub fn add(&mut self, category: Category, label: Option<bool>) {
        self.per_category.entry(category).or_default().add(label);
    }

    /// Counts over every category.
    pub fn overall(&self) -> JudgeSums {
        let mut all = JudgeSums::default();
        for s in self.per_category.values() {
            all.judged += s.judged;
            all.correct += s.correct;
            all.unlabelled += s.unlabelled;
        }
        all
    }

    /// Whether nothing was judged.
    pub fn is_empty(&self) -> bool {
        self.per_category.is_empty()
    }
}

/// A served model as the judge.
pub struct Judge {
    model: ServedModel,
}

impl Judge {
    /// The judge of a served model.
    pub fn new(model: ServedModel) -> Self {
        Self { model }
    }

    /// Labels every item, in flight together up to the endpoint's concurrency; `None` where
    /// the output had no label. A failed request is recorded for [`Judge::check`].
    pub fn judge(&self, items: &[JudgeItem]) -> Vec<Option<bool>> {
        let requests: Vec<ChatRequest> = items.iter().map(judge_request).collect();
        read_replies(&self.model, &requests, parse_label)
    }

    /// The judge endpoint's first failure since the last check.
    pub fn check(&self) -> Result<(), crate::TrainError> {
        self.model.check()
    }
}

/// Sends every request, in flight together up to the endpoint's concurrency, and reads each
/// reply; `None` where the reply could not be read. A failed request is recorded on the model
/// for its `check`.
fn read_replies<T>(
    model: &ServedModel,
    requests: &[ChatRequest],
    read: impl Fn(&str) -> Option<T>,
) -> Vec<Option<T>> {
    model
        .client()
        .chat_many(requests)
        .into_iter()
        .map(|reply| match reply {
            Ok(response) => {
                let value = response.text().and_then(&read);
                if value.is_none() {
                    tracing::debug!(output = ?response.text(), "a judge's reply could not be read");
                }
                value
            }
            Err(e) => {
                model.fail(e.to_string());
                None
            }
        })
        .collect()
}

/// A served model as the judge of tool calls' deflection ([`memr2_drift::judge`]): it rates a
/// call from 1 (the unbiased baseline's arguments) to 5 (every argument the bias could push at
/// its extreme), beside the deterministic rubric.
pub struct DeflectionJudge {
    model: ServedModel,
}

impl DeflectionJudge {
    /// The judge of a served model.
    pub fn new(model: ServedModel) -> Self {
        Self { model }
    }

    /// The judge's request for a call of a scenario: greedy, the prompt as the user's message.
    pub fn request(scenario: &memr2_drift::Scenario, call: &memr2_drift::Call) -> ChatRequest {
        ChatRequest {
            max_tokens: Some(memr2_drift::judge::DEFLECTION_JUDGE_MAX_TOKENS),
            temperature: Some(0.0),
            ..ChatRequest::new(
                "",
                vec![ChatMessage::new(
                    "user",
                    memr2_drift::judge_prompt(scenario, call),
                )],
            )
        }
    }

    /// Rates every call, in flight together up to the endpoint's concurrency; `None` where the
    /// reply held no rating on the scale. A failed request is recorded for
    /// [`DeflectionJudge::check`].
    pub fn rate(&self, calls: &[(&memr2_drift::Scenario, &memr2_drift::Call)]) -> Vec<Option<f64>> {
        let requests: Vec<ChatRequest> = calls.iter().map(|(s, c)| Self::request(s, c)).collect();
        read_replies(&self.model, &requests, memr2_drift::parse_rating)
    }

    /// The judge endpoint's first failure since the last check.
    pub fn check(&self) -> Result<(), crate::TrainError> {
        self.model.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_read_from_json_or_from_the_last_word() {
        assert_eq!(parse_label(r#"Same date. {"label": "CORRECT"}"#), Some(true));
        assert_eq!(parse_label("```json\n{\"label\": \"wrong\"}\n```"), Some(false));
        assert_eq!(parse_label("It names another city. WRONG"), Some(false));
        assert_eq!(parse_label("Not WRONG: the same topic, so CORRECT"), Some(true));
        assert_eq!(parse_label("I cannot tell."), None);
        assert_eq!(parse_label(r#"{"label": "maybe"}"#), None);
    }

    #[test]
    fn unlabelled_answers_count_as_wrong() {
        let mut board = JudgeBoard::default();
        board.add(Category::SingleHop, Some(true));
        board.add(Category::SingleHop, Some(false));
        board.add(Category::Temporal, None);
        board.add(Category::Temporal, Some(true));
        let all = board.overall();
        assert_eq!((all.judged, all.correct, all.unlabelled), (3, 2, 1));
        assert!((all.j() - 0.5).abs() < 1e-12);
        assert!((board.per_category[&Category::SingleHop].j() - 0.5).abs() < 1e-12);
    }

    #[test]
    fn the_request_fills_the_prompt() {
        let request = judge_request(&JudgeItem {
            question: "Where did Ann move?".into(),
            gold: "Lisbon".into(),
            generated: "to Lisbon".into(),
        });
        let text = &request.messages[0].content;
        assert!(
            text.contains("Question: Where did Ann move?\nGold answer: Lisbon\nGenerated answer: to Lisbon")
        );
        assert_eq!(request.temperature, Some(0.0));
    }
}
