"""Stand-in for the global external Application Load Balancer: HTTPS with a certificate of a local CA (for the
managed certificate), the rendered URL map evaluated as Google does (route rules by priority, path and `:method`,
`*` = one segment, fault-injection aborts for 405/404), the backends' custom response headers, and
`X-Forwarded-For` as Google writes it: what the client sent, then the client's address, then the load balancer's
(`<client-sent>, <client-ip>, <lb-ip>`)."""

from __future__ import annotations

import re
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import Response

from local.rehearsal.cloud_run import HOP, VIA_LB, proxy_client


def _path_matches(rule: dict[str, Any], path: str) -> bool:
    if "full_path_match" in rule:
        return bool(rule["full_path_match"] == path)
    if "path_template_match" in rule:
        pattern = "^" + re.escape(rule["path_template_match"]).replace(r"\*", "[^/]+") + "$"
        return re.match(pattern, path) is not None
    if "prefix_match" in rule:
        return path.startswith(rule["prefix_match"])
    raise ValueError(f"a URL-map match the stand-in does not know: {sorted(rule)}")


def _headers_match(rule: dict[str, Any], method: str) -> bool:
    for header in rule.get("header_matches", []):
        if header["header_name"] != ":method" or set(header) - {"header_name", "exact_match"}:
            raise ValueError(f"a header match the stand-in does not know: {header}")
        if header["exact_match"] != method:
            return False
    return True


def route(url_map: dict[str, Any], method: str, path: str) -> tuple[str, int]:
    """(backend reference, 0) or ("", abort status): the URL map's decision for one request."""
    (matcher,) = url_map["path_matcher"]
    for rule in sorted(matcher["route_rules"], key=lambda r: r["priority"]):
        if any(_path_matches(m, path) and _headers_match(m, method) for m in rule["match_rules"]):
            if "service" in rule:
                return rule["service"], 0
            return "", int(rule["route_action"]["fault_injection_policy"]["abort"]["http_status"])
    return "", int(matcher["default_route_action"]["fault_injection_policy"]["abort"]["http_status"])


class Front:
    """The load balancer: `handle` is its one Starlette endpoint."""

    def __init__(self, url_map: dict[str, Any], backends: dict[str, str], service_urls: dict[str, str],
                 response_headers: dict[str, list[str]], lb_ip: str) -> None:
        self.url_map = url_map
        self.backends = backends  # backend reference -> function key
        self.service_urls = service_urls  # function key -> its Cloud Run address
        self.response_headers = response_headers  # function key -> "Name: value" lines
        self.lb_ip = lb_ip
        self.client = proxy_client()
        self.requests = 0

    async def handle(self, request: Request) -> Response:
        """Route, forward, answer."""
        self.requests += 1
        backend, status = route(self.url_map, request.method, request.url.path)
        if not backend:
            return Response("fault filter abort", status_code=status, media_type="text/plain")
        function = self.backends[backend]
        sent = ", ".join(v for k, v in request.headers.items() if k == "x-forwarded-for")
        client_ip = request.client.host if request.client else ""
        forwarded = ", ".join(part for part in (sent, client_ip, self.lb_ip) if part)
        headers = [(k, v) for k, v in request.headers.raw
                   if k.decode().lower() not in HOP | {"x-forwarded-for", "x-forwarded-proto", VIA_LB}]
        headers += [(b"x-forwarded-for", forwarded.encode()), (b"x-forwarded-proto", b"https"),
                    (b"via", b"1.1 google"), (VIA_LB.encode(), b"1")]
        url = self.service_urls[function] + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        try:
            upstream = await self.client.request(request.method, url, headers=headers, content=await request.body())
        except httpx.HTTPError:
            return Response("upstream connect error", status_code=502, media_type="text/plain")
        response = Response(upstream.content, status_code=upstream.status_code)
        response.raw_headers = [(k, v) for k, v in upstream.headers.raw if k.decode().lower() not in HOP]
        response.raw_headers.append((b"content-length", str(len(upstream.content)).encode()))
        for line in self.response_headers.get(function, []):
            name, _, value = line.partition(":")
            response.raw_headers.append((name.strip().lower().encode(), value.strip().encode()))
        return response
