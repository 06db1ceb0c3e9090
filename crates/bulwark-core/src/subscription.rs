//! What a session records of one subscription: shared by the session state and by what the
//! journal tells a durable store (so that neither module imports the other for it).

use bulwark_proto::{SubscriptionId, SubscriptionOptions, TopicFilter};

/// One subscription of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRecord {
    /// The filter as subscribed (with its `$share/{name}/` prefix, if any).
    pub filter: TopicFilter,
    /// Options as granted (QoS lowered to what the broker supports).
    pub options: SubscriptionOptions,
    /// The Subscription Identifier given with it.
    pub id: Option<SubscriptionId>,
}
