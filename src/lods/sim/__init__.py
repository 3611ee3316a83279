"""Simulators for the demo, the tests and the benchmark (`lods-sim`): bedside monitors that
send vital signs as HL7 v2 over MLLP (`monitors`), and room sensors that report bed exits
and falls over MQTT or the webhook (`sensors`). Synthetic patients only; not a medical
device. The models are pure and seeded, so tests can ask what a bed shows at a time."""
