//! The attributes people have in the synthetic world, their values and canonical sentences.

use serde::{Deserialize, Serialize};

use crate::fact::Change;

/// One kind of fact about a person. Each attribute holds at most one value at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attribute {
    /// The city the person lives in (never removed, only moved).
    City,
    /// The person's occupation.
    Job,
    /// The company the person works for.
    Employer,
    /// The person the person is dating.
    Partner,
    /// The person's pet animal.
    Pet,
    /// The person's hobby.
    Hobby,
    /// The person's diet.
    Diet,
}

const CITIES: &[(&str, &str)] = &[
    ("Lyon", "France"),
    ("Paris", "France"),
    ("Berlin", "Germany"),
    ("Munich", "Germany"),
    ("Madrid", "Spain"),
    ("Lisbon", "Portugal"),
    ("Rome", "Italy"),
    ("Oslo", "Norway"),
    ("Dublin", "Ireland"),
    ("Vienna", "Austria"),
    ("Boston", "USA"),
    ("Denver", "USA"),
    ("Toronto", "Canada"),
    ("Sydney", "Australia"),
];
const CITY_NAMES: &[&str] = &[
    "Lyon", "Paris", "Berlin", "Munich", "Madrid", "Lisbon", "Rome", "Oslo", "Dublin", "Vienna", "Boston",
    "Denver", "Toronto", "Sydney",
];
const JOBS: &[&str] = &[
    "nurse",
    "chef",
    "teacher",
    "pilot",
    "baker",
    "lawyer",
    "plumber",
    "architect",
    "dentist",
    "librarian",
    "engineer",
    "designer",
];
const EMPLOYERS: &[&str] = &[
    "Acme",
    "Globex",
    "Initech",
    "Hooli",
    "Vandelay",
    "Soylent",
    "Cyberdyne",
    "Tyrell",
];
const PARTNERS: &[&str] = &[
    "Sam", "Max", "Robin", "Alex", "Jamie", "Taylor", "Jordan", "Casey",
];
const PETS: &[&str] = &["dog", "cat", "parrot", "rabbit", "hamster", "turtle"];
const HOBBIES: &[&str] = &[
    "chess",
    "climbing",
    "painting",
    "running",
    "pottery",
    "gardening",
    "cycling",
    "knitting",
    "surfing",
    "yoga",
];
const DIETS: &[&str] = &["vegetarian", "vegan", "pescatarian", "keto"];

impl Attribute {
    /// Every attribute, in declaration order.
    pub const ALL: [Attribute; 7] = [
        Attribute::City,
        Attribute::Job,
        Attribute::Employer,
        Attribute::Partner,
        Attribute::Pet,
        Attribute::Hobby,
        Attribute::Diet,
    ];

    /// Lower-case name, as stored in [`crate::Fact::attribute`].
    pub fn name(self) -> &'static str {
        match self {
            Attribute::City => "city",
            Attribute::Job => "job",
            Attribute::Employer => "employer",
            Attribute::Partner => "partner",
            Attribute::Pet => "pet",
            Attribute::Hobby => "hobby",
            Attribute::Diet => "diet",
        }
    }

    /// The attribute with the given [`Attribute::name`].
    pub fn from_name(name: &str) -> Option<Attribute> {
        Attribute::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The values the attribute can take. The lists of different attributes are disjoint.
    pub fn values(self) -> &'static [&'static str] {
        match self {
            Attribute::City => CITY_NAMES,
            Attribute::Job => JOBS,
            Attribute::Employer => EMPLOYERS,
            Attribute::Partner => PARTNERS,
            Attribute::Pet => PETS,
            Attribute::Hobby => HOBBIES,
            Attribute::Diet => DIETS,
        }
    }

    /// Word sequences (lower case) that mark a sentence as being about this attribute even
    /// without one of its values.
    pub fn keywords(self) -> &'static [&'static str] {
        match self {
            Attribute::City => &["lives in", "moved to", "living in", "city"],
            Attribute::Job => &["works as", "job", "occupation"],
            Attribute::Employer => &["works at", "working at", "employer", "company"],
            Attribute::Partner => &["dating", "partner", "broke up"],
            Attribute::Pet => &["pet"],
            Attribute::Hobby => &["hobby", "enjoys"],
            Attribute::Diet => &["diet"],
        }
    }

    /// Whether a value can end without a replacement ("quit the job", "the dog died").
    pub fn removable(self) -> bool {
        !matches!(self, Attribute::City)
    }

    /// Whether a value can be replaced by another one ("moved to Lyon").
    pub fn updatable(self) -> bool {
        !matches!(self, Attribute::Pet)
    }

    /// The country of a city value (world knowledge for open-domain questions).
    pub fn country_of(city: &str) -> Option<&'static str> {
        CITIES
            .iter()
            .find(|(c, _)| *c == city)
            .map(|(_, country)| *country)
    }

    /// The canonical sentence stating that `subject` currently has `value`, as a memory holds
    /// it: "Alice lives in Lyon", "Alice works as a chef".
    pub fn state_sentence(self, subject: &str, value: &str) -> String {
        match self {
            Attribute::City => format!("{subject} lives in {value}"),
            Attribute::Job => format!("{subject} works as {}", with_article(value)),
            Attribute::Employer => format!("{subject} works at {value}"),
            Attribute::Partner => format!("{subject} is dating {value}"),
            Attribute::Pet => format!("{subject} has {} as a pet", with_article(value)),
            Attribute::Hobby => format!("{subject} enjoys {value} as a hobby"),
            Attribute::Diet => format!("{subject} follows a {value} diet"),
        }
    }

    /// The canonical memory text after a change from `previous` to `value`:
    /// "Alice lives in Lyon, previously Paris".
    pub fn updated_sentence(self, subject: &str, value: &str, previous: &str) -> String {
        format!("{}, {PREVIOUSLY} {previous}", self.state_sentence(subject, value))
    }

    /// A relative clause describing a holder of `value`: "lives in Lyon", "works as a chef".
    pub fn clause(self, value: &str) -> String {
        match self {
            Attribute::City => format!("lives in {value}"),
            Attribute::Job => format!("works as {}", with_article(value)),
            Attribute::Employer => format!("works at {value}"),
            Attribute::Partner => format!("is dating {value}"),
            Attribute::Pet => format!("has {}", with_article(value)),
            Attribute::Hobby => format!("enjoys {value}"),
            Attribute::Diet => format!("is {value}"),
        }
    }

    /// The same clause as a yes/no question's verb phrase: "live in Lyon", "work as a chef".
    pub fn clause_base(self, value: &str) -> String {
        match self {
            Attribute::City => format!("live in {value}"),
            Attribute::Job => format!("work as {}", with_article(value)),
            Attribute::Employer => format!("work at {value}"),
            Attribute::Partner => format!("date {value}"),
            Attribute::Pet => format!("have {}", with_article(value)),
            Attribute::Hobby => format!("enjoy {value}"),
            Attribute::Diet => format!("eat a {value} diet"),
        }
    }
    /// The canonical fact sentence for a change (what a perfect extractor writes). It shares
    /// its words with the [`Attribute::state_sentence`] a memory holds, so that lexical
    /// retrieval finds the memory a change concerns: "Alice now lives in Lyon", "Alice no
    /// longer works as a chef". `value` is the new value, or for a removal the value that ended.
    pub fn fact_sentence(self, change: Change, subject: &str, value: &str) -> String {
        let state = self.state_sentence(subject, value);
        let rest = state.strip_prefix(subject).unwrap_or(&state).trim_start();
        match change {
            Change::New | Change::Restate => state,
            Change::Update => match rest.strip_prefix("is ") {
                Some(r) => format!("{subject} is now {r}"),
                None => format!("{subject} now {rest}"),
            },
            Change::Remove => match rest.strip_prefix("is ") {
                Some(r) => format!("{subject} is no longer {r}"),
                None => format!("{subject} no longer {rest}"),
            },
        }
    }
}

/// The word that separates the current value from the one before it in memory texts.
pub const PREVIOUSLY: &str = "previously";

/// "a chef", "an architect".
pub fn with_article(noun: &str) -> String {
    let vowel = noun.chars().next().is_some_and(|c| "aeiouAEIOU".contains(c));
    format!("{} {noun}", if vowel { "an" } else { "a" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_lists_are_disjoint() {
        let mut all: Vec<&str> = Attribute::ALL
            .iter()
            .flat_map(|a| a.values().iter().copied())
            .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
    }

    #[test]
    fn every_city_has_a_country() {
        for c in Attribute::City.values() {
            assert!(Attribute::country_of(c).is_some(), "{c}");
        }
        assert_eq!(CITIES.len(), CITY_NAMES.len());
    }

    #[test]
    fn sentences() {
        assert_eq!(
            Attribute::Job.state_sentence("Alice", "architect"),
            "Alice works as an architect"
        );
        assert_eq!(
            Attribute::City.updated_sentence("Alice", "Lyon", "Paris"),
            "Alice lives in Lyon, previously Paris"
        );
        assert_eq!(
            Attribute::City.fact_sentence(Change::Update, "Alice", "Lyon"),
            "Alice now lives in Lyon"
        );
        assert_eq!(
            Attribute::Partner.fact_sentence(Change::Remove, "Alice", "Sam"),
            "Alice is no longer dating Sam"
        );
        assert_eq!(
            Attribute::Job.fact_sentence(Change::Remove, "Alice", "chef"),
            "Alice no longer works as a chef"
        );
        assert_eq!(Attribute::from_name("diet"), Some(Attribute::Diet));
    }
}
