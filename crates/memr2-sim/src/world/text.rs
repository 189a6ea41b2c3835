//! Paraphrased turn templates of the synthetic world and their rendering.

use crate::attribute::{Attribute, with_article};
use crate::fact::Change;

/// How the speaker refers to the subject of a turn.
pub(crate) struct Voice<'a> {
    /// `None` when the speaker talks about themself; else e.g. "my sister Clara".
    pub third: Option<&'a str>,
    /// Whether the subject is referred to as "she" (third person only).
    pub female: bool,
}

/// Renders a template. Placeholders: `{I}` the subject, `{my}` / `{me}` possessive and object
/// pronouns, `{V}` / `{Va}` the value (with article), `{P}` / `{Pa}` the previous value, and
/// `{first|third}` a word chosen by grammatical person. The first letter is capitalised.
pub(crate) fn render(template: &str, voice: &Voice<'_>, value: &str, previous: &str) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = open + rest[open..].find('}').unwrap_or(rest.len() - open - 1);
        let key = &rest[open + 1..close];
        let third = voice.third.is_some();
        let word = match key {
            "I" => voice.third.unwrap_or("I").to_string(),
            "my" => pronoun(voice, "my", "her", "his"),
            "me" => pronoun(voice, "me", "her", "him"),
            "V" => value.to_string(),
            "Va" => with_article(value),
            "P" => previous.to_string(),
            "Pa" => with_article(previous),
            _ => match key.split_once('|') {
                Some((first, other)) => (if third { other } else { first }).to_string(),
                None => key.to_string(),
            },
        };
        out.push_str(&word);
        rest = &rest[(close + 1).min(rest.len())..];
    }
    out.push_str(rest);
    capitalise(&out)
}

fn pronoun(voice: &Voice<'_>, first: &str, she: &str, he: &str) -> String {
    match (voice.third, voice.female) {
        (None, _) => first,
        (Some(_), true) => she,
        (Some(_), false) => he,
    }
    .to_string()
}

pub(crate) fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// The paraphrases of a fact-bearing turn.
pub(crate) fn fact_templates(attribute: Attribute, change: Change) -> &'static [&'static str] {
    use Attribute as A;
    use Change as C;
    match (attribute, change) {
        (A::City, C::New) => &[
            "{I} {live|lives} in {V}, close to the old town.",
            "{I} {have|has} been living in {V} for a few years now.",
            "{I} {call|calls} {V} home these days.",
            "{I} {am|is} based in {V} at the moment.",
        ],
        (A::City, C::Update) => &[
            "Big news: {I} just moved to {V}!",
            "{I} finally left {P} and moved to {V}.",
            "{I} {am|is} settling into a new flat in {V}.",
            "After years in {P}, {I} relocated to {V} last week.",
        ],
        (A::City, C::Remove) => &["{I} packed up and left {V} for good."],
        (A::City, C::Restate) => &[
            "{I} {am|is} still loving life in {V}.",
            "{I} {am|is} still happy living in {V}.",
        ],
        (A::Job, C::New) => &[
            "{I} {work|works} as {Va} at the moment.",
            "{I} {am|is} {Va} by trade.",
            "These days {I} {earn|earns} a living as {Va}.",
        ],
        (A::Job, C::Update) => &[
            "{I} changed careers and {am|is} now {Va}!",
            "{I} stopped being {Pa} and became {Va}.",
            "Guess what, {I} started a new job as {Va}.",
        ],
        (A::Job, C::Remove) => &[
            "{I} quit {my} job as {Va} last week.",
            "{I} {am|is} not working as {Va} anymore.",
            "{I} walked away from {my} job as {Va}.",
        ],
        (A::Job, C::Restate) => &["{I} {am|is} still working as {Va} and enjoying it."],
        (A::Employer, C::New) => &[
            "{I} {work|works} at {V}, a big company downtown.",
            "{I} {am|is} employed at {V}.",
            "{I} {am|is} on the team at {V}.",
        ],
        (A::Employer, C::Update) => &[
            "{I} left {P} and joined {V}.",
            "{I} just started at {V}, a new company for {me}.",
            "{I} moved from {P} to a job at {V}.",
        ],
        (A::Employer, C::Remove) => &[
            "{I} left {V} for good last month.",
            "{I} {am|is} no longer at {V}.",
            "{I} handed in {my} notice at {V}.",
        ],
        (A::Employer, C::Restate) => &["{I} {am|is} still at {V}, busy as ever."],
        (A::Partner, C::New) => &[
            "{I} {have|has} been dating {V} for a while.",
            "{I} {am|is} seeing someone called {V}.",
            "{I} met {V} and {we|they} are together now.",
        ],
        (A::Partner, C::Update) => &[
            "{I} {am|is} with {V} now, things with {P} ended.",
            "{I} started dating {V} after splitting from {P}.",
            "{I} {have|has} a new partner called {V}.",
        ],
        (A::Partner, C::Remove) => &[
            "{I} broke up with {V}.",
            "{I} and {V} split up last week.",
            "{I} {am|is} not with {V} anymore.",
        ],
        (A::Partner, C::Restate) => &["{I} {am|is} still happily with {V}."],
        (A::Pet, C::New | C::Update) => &[
            "{I} adopted {Va} from the shelter.",
            "{I} got {Va}, a sweet little thing.",
            "{I} {have|has} {Va} at home now.",
        ],
        (A::Pet, C::Remove) => &[
            "{I} lost {my} {V}, it died last week.",
            "{I} had to give {my} {V} away.",
            "{I} no longer {have|has} {Va}, sadly.",
        ],
        (A::Pet, C::Restate) => &[
            "{I} took {my} {V} to the vet, all good.",
            "{I} bought a new toy for {my} {V}.",
        ],
        (A::Hobby, C::New) => &[
            "{I} {have|has} really gotten into {V} lately.",
            "{I} took up {V} this spring.",
            "{I} {spend|spends} {my} weekends on {V}.",
        ],
        (A::Hobby, C::Update) => &[
            "{I} dropped {P} and took up {V} instead.",
            "{I} {am|is} into {V} now, {P} got boring.",
            "{I} switched from {P} to {V}.",
        ],
        (A::Hobby, C::Remove) => &[
            "{I} gave up {V}, no time for it.",
            "{I} {do|does} not do {V} anymore.",
            "{I} stopped {V} for good.",
        ],
        (A::Hobby, C::Restate) => &["{I} {am|is} still into {V}."],
        (A::Diet, C::New) => &[
            "{I} {am|is} {V}, no exceptions.",
            "{I} {follow|follows} a {V} diet.",
            "{I} {have|has} been {V} for years.",
        ],
        (A::Diet, C::Update) => &[
            "{I} went from {P} to {V} this month.",
            "{I} {am|is} {V} now, no longer {P}.",
            "{I} switched to a {V} diet.",
        ],
        (A::Diet, C::Remove) => &[
            "{I} {am|is} not {V} anymore.",
            "{I} quit the {V} diet.",
            "{I} stopped being {V}.",
        ],
        (A::Diet, C::Restate) => &["{I} {am|is} still {V} and feeling great."],
    }
}

/// Replies of the other speaker to a fact turn; they mention the value but state no fact.
pub(crate) fn reaction_templates(attribute: Attribute, change: Change) -> &'static [&'static str] {
    use Attribute as A;
    if change == Change::Remove {
        return &[
            "Oh no, sorry to hear that.",
            "That is a big change!",
            "Really? I did not expect that.",
        ];
    }
    match attribute {
        A::City => &["{V} sounds lovely!", "Oh nice, I have never been to {V}."],
        A::Job => &["Wow, {Va}? Cool!", "Being {Va} sounds like hard work."],
        A::Employer => &["I heard {V} is a good place to work.", "Is {V} nice so far?"],
        A::Partner => &["{V} sounds great!", "I would love to meet {V} someday."],
        A::Pet => &["Aww, I love {V}s!", "Send me a photo of the {V}!"],
        A::Hobby => &["I tried {V} once, it was hard.", "{V} sounds like fun."],
        A::Diet => &["I could never go {V}!", "Is it hard to stay {V}?"],
    }
}

/// Greetings that open a session; `{O}` is the other speaker.
pub(crate) const GREETINGS: &[&str] = &[
    "Hi {O}! How have you been?",
    "Hey {O}, good to hear from you!",
    "Hello {O}! What is new with you?",
    "Hi {O}, long time no talk!",
];

/// Chit-chat that carries no fact.
pub(crate) const CHIT_CHAT: &[&str] = &[
    "How was your weekend?",
    "Pretty quiet, I mostly rested.",
    "The weather has been strange lately.",
    "I watched a great film on Friday.",
    "Traffic this morning was terrible.",
    "Did you see the game last night?",
    "I am reading a good book right now.",
    "I made pasta for dinner yesterday.",
    "We should meet for coffee soon.",
    "Not much new here, just the usual.",
    "That is good to hear.",
    "Same here, it has been a long week.",
];

/// Chit-chat that mentions a value of an attribute without stating a fact about anyone here.
pub(crate) fn decoy_template(attribute: Attribute) -> &'static str {
    match attribute {
        Attribute::City => "I saw a documentary about {V} last night.",
        Attribute::Job => "A friend of mine is {Va}.",
        Attribute::Employer => "I read an article about {V} today.",
        Attribute::Partner => "I ran into someone called {V} at the shop.",
        Attribute::Pet => "My neighbour just got {Va}.",
        Attribute::Hobby => "There is a {V} club near my office.",
        Attribute::Diet => "The new cafe has a {V} menu.",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_first_and_third_person() {
        let me = Voice {
            third: None,
            female: true,
        };
        let sis = Voice {
            third: Some("my sister Clara"),
            female: true,
        };
        let t = "{I} quit {my} job as {Va}, {am|is} glad.";
        assert_eq!(
            render(t, &me, "architect", ""),
            "I quit my job as an architect, am glad."
        );
        assert_eq!(
            render(t, &sis, "chef", ""),
            "My sister Clara quit her job as a chef, is glad."
        );
        assert_eq!(
            render("{I} left {P} for {V}.", &me, "Lyon", "Paris"),
            "I left Paris for Lyon."
        );
    }

    #[test]
    fn every_change_has_paraphrases() {
        for a in Attribute::ALL {
            for c in [Change::New, Change::Update, Change::Remove, Change::Restate] {
                assert!(!fact_templates(a, c).is_empty());
            }
            if a.updatable() {
                assert!(fact_templates(a, Change::Update).len() >= 3, "{a:?}");
            }
        }
    }
}
