"""schemathesis hooks for scripts/schemathesis (loaded through SCHEMATHESIS_HOOKS).

One rule of a publish body is beyond JSON Schema: an `org:` channel in `channels` must name the
event's own `orgId` (CONTRACT.md section 4). A generated body that names another org's channel is
schema-valid and rightly refused, so the check that schema-valid requests are accepted would
report it. This hook points such a channel at the event's own org; it changes nothing else, and
never makes an invalid body valid (a valid channel id stays one, and a bad orgId stays bad).
"""

import re

import schemathesis

ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _own_org(event):
    if not isinstance(event, dict):
        return
    org, channels = event.get("orgId"), event.get("channels")
    if not isinstance(org, str) or not ID.match(org) or not isinstance(channels, list):
        return
    for i, c in enumerate(channels):
        if isinstance(c, str) and c.startswith("org:") and ID.match(c[4:]):
            channels[i] = "org:" + org


@schemathesis.hook
def map_body(context, body):
    if isinstance(body, dict) and isinstance(body.get("events"), list):
        for event in body["events"]:
            _own_org(event)
    else:
        _own_org(body)
    return body
