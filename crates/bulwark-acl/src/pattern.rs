//! Topic patterns of ACL rules once their templates are filled in: a pattern is an MQTT topic
//! filter (`+` one level, `#` the rest), compared with topic names for PUBLISH and with
//! topic filters for SUBSCRIBE.
//!
//! Both comparisons keep the `$` rule of MQTT [MQTT-4.7.2-1]: a topic whose first level starts
//! with `$` is matched only by a pattern whose first level names it, never by `+` or `#`.

/// One level of a pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    /// A name: the byte range of the pattern's text it occupies (one allocation holds every
    /// level's text; a connection resolves its patterns with few allocations).
    Literal(u32, u32),
    /// `+`
    One,
    /// `#` (always the last level)
    Rest,
}

/// A compiled pattern: its levels, checked once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    levels: Box<[Level]>,
    text: Box<str>,
}

impl Pattern {
    /// Parses a filled-in pattern. Errors say what is wrong, for the rule's error message.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        // MQTT's own topic-filter grammar (non-empty, UTF-8 without NUL, `+` and `#` whole
        // levels, `#` last), as the codec checks it: one grammar for the wire and the rules.
        bulwark_proto::TopicFilter::new(text).map_err(|err| err.to_string())?;
        let Ok(total) = u32::try_from(text.len()) else {
            return Err("the topic pattern is too long".to_owned());
        };
        let mut levels = Vec::new();
        let mut start = 0u32;
        for part in text.split('/') {
            // Within `total`, which fits a u32.
            let end = start.saturating_add(u32::try_from(part.len()).unwrap_or(total));
            levels.push(match part {
                "+" => Level::One,
                "#" => Level::Rest,
                _ => Level::Literal(start, end),
            });
            start = end.saturating_add(1);
        }
        Ok(Self {
            levels: levels.into_boxed_slice(),
            text: text.into(),
        })
    }

    /// The pattern as written (templates filled in).
    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    /// The text of a literal level.
    fn name(&self, start: u32, end: u32) -> &str {
        self.text
            .get(start as usize..end as usize)
            .unwrap_or_default()
    }

    /// Whether the first level is a `$` name (`$SYS/...`).
    pub(crate) fn is_dollar(&self) -> bool {
        matches!(self.levels.first(), Some(&Level::Literal(a, b)) if self.name(a, b).starts_with('$'))
    }

    /// Whether the pattern matches every topic that does not start with `$` (`#`, `+/#`, ...).
    pub(crate) fn matches_everything(&self) -> bool {
        match self.levels.split_last() {
            Some((Level::Rest, rest)) => rest.iter().all(|l| *l == Level::One) && rest.len() <= 1,
            _ => false,
        }
    }

    /// Whether the topic name `topic` (no wildcards) is matched. On the publish path: walks
    /// the topic's bytes once, comparing literal levels in place, and allocates nothing.
    pub(crate) fn matches_topic(&self, topic: &str) -> bool {
        if topic.starts_with('$') && !self.is_dollar() {
            return false;
        }
        // What is left of the topic from the start of its next level; `None` once the last
        // level has been consumed.
        let mut rest: Option<&[u8]> = Some(topic.as_bytes());
        for level in &self.levels {
            let Some(r) = rest else {
                // `#` also matches the parent level (`a/#` matches `a`).
                return *level == Level::Rest;
            };
            match level {
                Level::Rest => return true,
                Level::One => {
                    rest = r
                        .iter()
                        .position(|b| *b == b'/')
                        .and_then(|p| r.get(p + 1..));
                }
                &Level::Literal(a, b) => {
                    let Some(after) = r.strip_prefix(self.name(a, b).as_bytes()) else {
                        return false;
                    };
                    rest = match after.split_first() {
                        None => None,
                        Some((b'/', tail)) => Some(tail),
                        Some(_) => return false,
                    };
                }
            }
        }
        rest.is_none()
    }

    /// Whether every topic the filter `filter` can match is matched by this pattern.
    pub(crate) fn contains(&self, filter: &Pattern) -> bool {
        if filter.is_dollar() && !self.is_dollar() {
            // The filter names a `$` topic: only a pattern naming it too covers it.
            return false;
        }
        let mine = &self.levels;
        let theirs = &filter.levels;
        let mut i = 0;
        loop {
            match (mine.get(i), theirs.get(i)) {
                (Some(Level::Rest), _) => return true,
                (None, None) => return true,
                // The filter's `#` also matches its parent level, and every level below.
                (_, Some(Level::Rest)) | (None, Some(_)) | (Some(_), None) => return false,
                (Some(Level::One), Some(_)) => {}
                (Some(&Level::Literal(a0, a1)), Some(&Level::Literal(b0, b1)))
                    if self.name(a0, a1) == filter.name(b0, b1) => {}
                (Some(Level::Literal(..)), Some(_)) => return false,
            }
            i += 1;
        }
    }

    /// Whether some topic is matched both by this pattern and by the filter `filter`.
    pub(crate) fn overlaps(&self, filter: &Pattern) -> bool {
        let (a, b) = (&self.levels, &filter.levels);
        // A `$` topic needs a literal `$` first level on both sides; a wildcard first level on
        // one side meets only non-`$` topics, which a literal `$` level on the other excludes.
        if self.is_dollar() != filter.is_dollar()
            && (matches!(a.first(), Some(Level::One | Level::Rest))
                || matches!(b.first(), Some(Level::One | Level::Rest)))
        {
            return false;
        }
        let mut i = 0;
        loop {
            match (a.get(i), b.get(i)) {
                (Some(Level::Rest), _) | (_, Some(Level::Rest)) => return true,
                (None, None) => return true,
                (None, Some(_)) | (Some(_), None) => return false,
                (Some(Level::One), Some(_)) | (Some(_), Some(Level::One)) => {}
                (Some(&Level::Literal(a0, a1)), Some(&Level::Literal(b0, b1))) => {
                    if self.name(a0, a1) != filter.name(b0, b1) {
                        return false;
                    }
                }
            }
            i += 1;
        }
    }
}

/// What is left of a pattern from one of its levels on.
type Suffix<'a> = (&'a Pattern, usize);

impl Pattern {
    fn level(&self, at: usize) -> Option<Level> {
        self.levels.get(at).copied()
    }
}

/// Whether every topic the filter `filter` can match is matched by at least one of
/// `patterns` (containment by a union). Exact: the topics of a `+` or `#` level range over
/// infinitely many names, of which only the patterns' `+` and `#` levels can match all; a
/// literal level is matched by the patterns with that name or a wildcard there. Linear in the
/// patterns' total length times the filter's.
pub(crate) fn union_contains(patterns: &[&Pattern], filter: &Pattern) -> bool {
    let dollar = filter.is_dollar();
    let suffixes: Vec<Suffix<'_>> = patterns
        .iter()
        // A `$` topic is matched only by patterns naming it [MQTT-4.7.2-1].
        .filter(|p| !dollar || p.is_dollar())
        .map(|p| (*p, 0))
        .collect();
    covered(&suffixes, filter, 0)
}

/// Whether the topic suffixes `filter` matches from level `at` are all matched by one of
/// `suffixes`.
fn covered(suffixes: &[Suffix<'_>], filter: &Pattern, at: usize) -> bool {
    if suffixes
        .iter()
        .any(|(p, i)| p.level(*i) == Some(Level::Rest))
    {
        return true;
    }
    match filter.level(at) {
        // The topic ends here.
        None => suffixes.iter().any(|(p, i)| p.level(*i).is_none()),
        Some(Level::Rest) => covered_rest(suffixes, at == 0),
        Some(Level::One) => {
            let next = advance(suffixes, |level| level == Level::One);
            !next.is_empty() && covered(&next, filter, at + 1)
        }
        Some(Level::Literal(a, b)) => {
            let name = filter.name(a, b);
            let next: Vec<Suffix<'_>> = suffixes
                .iter()
                .filter(|(p, i)| match p.level(*i) {
                    Some(Level::One) => true,
                    Some(Level::Literal(c, d)) => p.name(c, d) == name,
                    _ => false,
                })
                .map(|(p, i)| (*p, i + 1))
                .collect();
            !next.is_empty() && covered(&next, filter, at + 1)
        }
    }
}

/// Whether every suffix (any number of levels, none included unless `top`: a topic has at
/// least one) is matched by one of `suffixes`: what a `#` level asks.
fn covered_rest(suffixes: &[Suffix<'_>], top: bool) -> bool {
    if suffixes
        .iter()
        .any(|(p, i)| p.level(*i) == Some(Level::Rest))
    {
        return true;
    }
    let ends = top || suffixes.iter().any(|(p, i)| p.level(*i).is_none());
    if !ends {
        return false;
    }
    // One more level of any name, and anything after it.
    let next = advance(suffixes, |level| level == Level::One);
    !next.is_empty() && covered_rest(&next, false)
}

/// The suffixes whose next level passes `keep`, past that level.
fn advance<'a>(suffixes: &[Suffix<'a>], keep: impl Fn(Level) -> bool) -> Vec<Suffix<'a>> {
    suffixes
        .iter()
        .filter(|(p, i)| p.level(*i).is_some_and(&keep))
        .map(|(p, i)| (*p, i + 1))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_union_of_patterns_covers_exactly() {
        let cases: &[(&[&str], &str, bool)] = &[
            (&["a/#"], "a/+/c", true),
            (&["a/b", "a/c"], "a/+", false),
            (&["a", "a/+/#"], "a/#", true),
            (&["a/+/#"], "a/#", false),
            (&["a", "a/+", "a/+/+"], "a/#", false),
            (&["a/+", "a/+/#"], "a/+/#", true),
            (&["+/x", "+/y"], "+/x", true),
            (&["+/x", "b/+"], "b/+", true),
            (&["+/x", "b/y"], "b/+", false),
            (&["+", "+/#"], "#", true),
            (&["+"], "#", false),
            (&["+/+/#", "+"], "#", true),
            (&["+/+/#", "+", "+/+"], "#", true),
            (&["a/b/#", "a/c/#", "a/+/d"], "a/+/d", true),
            (&["#"], "$SYS/#", false),
            (&["$SYS/a", "$SYS/+/#"], "$SYS/+", true),
            (&["$SYS/+"], "$SYS/#", false),
            (&["a/+/c", "a/b/+"], "a/b/c", true),
        ];
        for (patterns, filter, expected) in cases {
            let patterns: Vec<Pattern> = patterns.iter().map(|t| p(t)).collect();
            let refs: Vec<&Pattern> = patterns.iter().collect();
            assert_eq!(
                union_contains(&refs, &p(filter)),
                *expected,
                "{patterns:?} ⊇ {filter}"
            );
            // One pattern alone: the same answer as containment.
            if let [one] = refs.as_slice() {
                assert_eq!(one.contains(&p(filter)), *expected, "{filter}");
            }
        }
    }

    fn p(text: &str) -> Pattern {
        Pattern::parse(text).unwrap()
    }

    #[test]
    fn grammar_is_checked() {
        for bad in ["", "a/#/b", "a+", "a/b#", "#/a", "x\0y"] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
        for good in ["#", "+", "a/+/b", "a/#", "/", "$SYS/#", "+/+"] {
            assert!(Pattern::parse(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn topics_are_matched_as_mqtt_does() {
        let cases = [
            ("#", "a", true),
            ("#", "a/b/c", true),
            ("#", "$SYS/x", false),
            ("+/#", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("$SYS/#", "$SYS", true),
            ("a/#", "a", true),
            ("a/#", "ab", false),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/+", "a", false),
            ("a/+", "a/", true),
            ("a/b", "a/b", true),
            ("a/b", "a/b/", false),
            ("+", "", true),
            ("+/+", "/", true),
        ];
        for (pattern, topic, expected) in cases {
            assert_eq!(
                p(pattern).matches_topic(topic),
                expected,
                "{pattern} {topic}"
            );
        }
    }

    #[test]
    fn containment_covers_every_topic_of_the_filter() {
        let cases = [
            ("#", "a/b", true),
            ("#", "#", true),
            ("#", "$SYS/#", false),
            ("$SYS/#", "$SYS/broker/+", true),
            ("a/#", "a/#", true),
            ("a/#", "a", true),
            ("a/#", "a/+/c", true),
            ("a/+", "a/#", false),
            ("a/+", "a/+", true),
            ("a/+", "a/b", true),
            ("a/b", "a/+", false),
            ("a/b", "a/b/#", false),
            ("a/b/#", "a/#", false),
            ("+/b", "a/b", true),
            ("+/b", "+/b", true),
            ("+/b", "#", false),
            ("a", "a", true),
            ("a", "a/b", false),
        ];
        for (pattern, filter, expected) in cases {
            assert_eq!(
                p(pattern).contains(&p(filter)),
                expected,
                "{pattern} ⊇ {filter}"
            );
        }
    }

    #[test]
    fn overlap_finds_a_common_topic() {
        let cases = [
            ("sensor/secret/#", "sensor/#", true),
            ("sensor/secret/#", "sensor/+", true),
            ("sensor/secret/#", "sensor/public", false),
            ("a/+/c", "a/b/+", true),
            ("a/b", "a/b/#", true),
            ("a/b/c", "a/b", false),
            ("#", "$SYS/#", false),
            ("+", "$SYS", false),
            ("$SYS/#", "$SYS/x", true),
            ("$SYS/x", "$SYS/y", false),
            ("#", "#", true),
            ("+", "a/b", false),
        ];
        for (a, b, expected) in cases {
            assert_eq!(p(a).overlaps(&p(b)), expected, "{a} ∩ {b}");
            assert_eq!(p(b).overlaps(&p(a)), expected, "{b} ∩ {a}");
        }
    }

    #[test]
    fn everything_patterns_are_recognised() {
        assert!(p("#").matches_everything());
        assert!(p("+/#").matches_everything());
        assert!(!p("a/#").matches_everything());
        assert!(!p("$SYS/#").matches_everything());
        assert!(!p("+").matches_everything());
    }
}
