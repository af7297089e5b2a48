// URLs the page builds from the API's values: names that are not UTF-8 come back as the same bytes.
import {test} from "node:test";
import assert from "node:assert/strict";
import {encodeValue, query, seg} from "../../daemon/syncsnapd/dashboard/js/api.js";

test("ordinary values are encoded as encodeURIComponent does", () => {
  for (const s of ["plain", "a b/c?d&e=f", "report ü.txt", "emoji 😀", "100%"]) {
    assert.equal(encodeValue(s), encodeURIComponent(s));
  }
});

test("a lone surrogate U+DC80..U+DCFF goes back as the byte it stands for", () => {
  // b"bad\xff.txt" is "bad\udcff.txt" in the API's JSON.
  assert.equal(encodeValue("bad\udcff.txt"), "bad%FF.txt");
  assert.equal(encodeValue("\udc80\udcc3"), "%80%C3");
});

test("any other lone surrogate cannot name a file and becomes U+FFFD", () => {
  assert.equal(encodeValue("x\ud800y"), "x%EF%BF%BDy");
  assert.equal(encodeValue("x\udc00"), "x%EF%BF%BD");
});

test("query strings leave out empty values and encode paths", () => {
  assert.equal(query({path: "sub/bad\udcff", limit: 10, before: null, x: ""}), "?path=sub%2Fbad%FF&limit=10");
  assert.equal(query({}), "");
  assert.equal(seg("a/b"), "a%2Fb");
});
