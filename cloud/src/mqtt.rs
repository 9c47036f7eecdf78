//! Topics and connection settings shared by the cloud workers.
//!
//! A device `d` of fleet `f` publishes samples on `shiftnn/f/d/samples`
//! (QoS 1) and reads its retained patch on `shiftnn/f/d/affine`. Workers
//! read samples through the shared subscription
//! `$share/<group>/shiftnn/f/+/samples`, so the broker hands each sample to
//! one worker of the group, and stay in step with each other through the
//! retained learner state of each device on `shiftnn/f/d/state`, a topic
//! the broker's ACL keeps from the devices (see [`crate::worker`]).

pub use shiftnn_runtime::adapt::mqtt::{affine_topic, samples_topic};

/// The shared subscription of a group of workers.
pub fn shared_samples_filter(group: &str, fleet: &str) -> String {
    format!("$share/{group}/shiftnn/{fleet}/+/samples")
}

/// The topic of a device's retained learner state (cloud only).
pub fn state_topic(fleet: &str, device: &str) -> String {
    format!("shiftnn/{fleet}/{device}/state")
}

/// Every device's learner-state topic.
pub fn all_state_filter(fleet: &str) -> String {
    format!("shiftnn/{fleet}/+/state")
}

/// What a topic of the fleet carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicKind {
    /// A device's uploaded samples.
    Samples,
    /// A device's retained patch.
    Affine,
    /// A device's retained learner state (workers only).
    State,
}

/// Split `shiftnn/<fleet>/<device>/<kind>` into the device and the kind;
/// `None` for any other topic (another fleet, extra levels, empty device).
pub fn parse_topic<'a>(topic: &'a str, fleet: &str) -> Option<(&'a str, TopicKind)> {
    let rest = topic
        .strip_prefix("shiftnn/")?
        .strip_prefix(fleet)?
        .strip_prefix('/')?;
    let (device, kind) = rest.split_once('/')?;
    if device.is_empty() || device.contains(['+', '#']) {
        return None;
    }
    let kind = match kind {
        "samples" => TopicKind::Samples,
        "affine" => TopicKind::Affine,
        "state" => TopicKind::State,
        _ => return None,
    };
    Some((device, kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip_and_others_are_refused() {
        assert_eq!(
            parse_topic(&samples_topic("f", "d1"), "f"),
            Some(("d1", TopicKind::Samples))
        );
        assert_eq!(
            parse_topic(&affine_topic("f", "d1"), "f"),
            Some(("d1", TopicKind::Affine))
        );
        assert_eq!(
            parse_topic(&state_topic("f", "d1"), "f"),
            Some(("d1", TopicKind::State))
        );
        for t in [
            "shiftnn/g/d1/samples",
            "shiftnn/f/d1/other",
            "shiftnn/f//samples",
            "shiftnn/f/a/b/samples",
            "shiftnn/fx/d/samples",
            "x/f/d/samples",
        ] {
            assert_eq!(parse_topic(t, "f"), None, "{t}");
        }
        assert_eq!(
            shared_samples_filter("w", "f"),
            "$share/w/shiftnn/f/+/samples"
        );
    }
}
