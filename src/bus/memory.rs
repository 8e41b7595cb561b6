//! The in-process bus of a single node: publishing is a direct hand-off to the handler.

use std::sync::{Arc, OnceLock, Weak};

use async_trait::async_trait;

use super::{Bus, BusEvent, BusHandler, Topic};

#[derive(Default)]
pub struct MemoryBus {
    handler: OnceLock<Weak<dyn BusHandler>>,
}

impl MemoryBus {
    pub fn new() -> MemoryBus {
        MemoryBus::default()
    }
}

#[async_trait]
impl Bus for MemoryBus {
    fn attach(&self, handler: Weak<dyn BusHandler>) {
        let _ = self.handler.set(handler);
    }

    async fn publish(&self, topic: &Topic, event: BusEvent) -> anyhow::Result<()> {
        // One node: every topic has this node as its only subscriber, and the handler drops
        // what no local session wants.
        if let Some(handler) = self.handler.get().and_then(Weak::upgrade) {
            handler.deliver(topic, Arc::new(event));
        }
        Ok(())
    }

    async fn subscribe(&self, _topic: &Topic) -> anyhow::Result<()> {
        Ok(())
    }

    async fn unsubscribe(&self, _topic: &Topic) -> anyhow::Result<()> {
        Ok(())
    }

    fn is_connected(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl BusHandler for Recorder {
        fn deliver(&self, topic: &Topic, _event: Arc<BusEvent>) {
            self.0.lock().unwrap().push(topic.to_string());
        }
    }

    #[tokio::test]
    async fn delivers_each_publish_once_to_the_handler() {
        let bus = MemoryBus::new();
        let recorder = Arc::new(Recorder::default());
        let weak: Weak<dyn BusHandler> = Arc::downgrade(&recorder) as Weak<dyn BusHandler>;
        bus.attach(weak);
        let topic = Topic::Subject("dr-1".into());
        bus.subscribe(&topic).await.unwrap();
        bus.publish(&topic, BusEvent::AccessChanged { subject: "dr-1".into() }).await.unwrap();
        bus.publish(&topic, BusEvent::AccessChanged { subject: "dr-1".into() }).await.unwrap();
        assert_eq!(*recorder.0.lock().unwrap(), vec!["subject.dr-1", "subject.dr-1"]);
    }
}
