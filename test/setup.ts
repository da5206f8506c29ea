// Loaded before every spec (.mocharc.cjs). Tests bind only ephemeral ports on 127.0.0.1 and
// reach no service the machine happens to have: a hub config node left at its defaults would
// otherwise open the embedded MQTT broker on 1883 and CoAP on 5683, or connect to the broker
// a developer's shell names.
process.env.TETHRAL_MQTT_PORT = "0";
process.env.TETHRAL_COAP_PORT = "0";
delete process.env.TETHRAL_MQTT_URL;
delete process.env.TETHRAL_DEVICE_TOKENS;
delete process.env.HOST;
// A database named in the shell (a developer's PostgreSQL) is never a test's: tests that want
// one pass TETHRAL_DB themselves.
delete process.env.TETHRAL_DB;
