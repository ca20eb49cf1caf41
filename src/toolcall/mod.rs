//! PLACEHOLDER until the tool-call transform lands (replaced wholesale).
use std::sync::Arc;
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    GptOss,
    Hermes,
    Llama3Json,
    Mistral,
    Pythonic,
    None,
}
impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}
#[derive(Debug, Clone, Default)]
pub struct FormatRules(Vec<(String, Family)>);
#[derive(Debug, thiserror::Error)]
#[error("bad")]
pub struct FormatRulesError;
impl FormatRules {
    pub fn parse(_s: &str) -> Result<Self, FormatRulesError> {
        Ok(Self::default())
    }
    pub fn family_for(&self, _m: &str) -> Family {
        Family::None
    }
    pub fn rules(&self) -> impl Iterator<Item = (&str, Family)> {
        self.0.iter().map(|(a, b)| (a.as_str(), *b))
    }
}
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub accept_code_fence: bool,
    pub harmony_stripped_recovery: bool,
}
pub struct RequestTools;
impl RequestTools {
    pub fn from_request(_b: &serde_json::Value) -> Option<RequestTools> {
        None
    }
}
#[derive(Default)]
pub struct Counters;
impl Counters {
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}
pub fn repair_response(
    _b: &mut serde_json::Value,
    _f: Family,
    _t: &RequestTools,
    _o: &Options,
    _c: &Counters,
) {
}
pub struct StreamRepair;
pub enum Emit {
    PassThrough,
    Replace(Vec<String>),
}
impl StreamRepair {
    pub fn new(_f: Family, _t: RequestTools, _o: Options, _c: Arc<Counters>) -> Self {
        Self
    }
    pub fn push(&mut self, _d: &str) -> Emit {
        Emit::PassThrough
    }
    pub fn finish(&mut self) -> Vec<String> {
        Vec::new()
    }
}
