/* Key patterns as the server reads them, for the one place the page must filter by itself: the
 * current values from /memory/list, which takes no patterns. The server has already checked the
 * patterns (the stream refuses malformed ones), so only valid globs arrive here.
 */

/** A test of keys against comma-separated globs: a key passes if any glob matches it. */
export function keyMatcher(patterns) {
  const globs = (patterns || "").split(",").map((glob) => glob.trim()).filter(Boolean);
  if (!globs.length) return () => true;
  const expressions = globs.map(globExpression);
  return (key) => expressions.some((expression) => expression.test(key));
}

/** Go's filepath.Match on Unix as a RegExp: `*` and `?` never match `/`, classes may. */
function globExpression(glob) {
  const chars = Array.from(glob); // code points, as the server counts them
  let i = 0;
  const take = () => {
    if (chars[i] === "\\") i++;
    return chars[i++];
  };
  let source = "";
  while (i < chars.length) {
    if (chars[i] === "*") {
      source += "[^/]*";
      i++;
    } else if (chars[i] === "?") {
      source += "[^/]";
      i++;
    } else if (chars[i] === "[") {
      i++;
      source += characterClass();
    } else {
      source += literal(take());
    }
  }
  return new RegExp(`^(?:${source})$`, "u");

  function characterClass() {
    const negate = chars[i] === "^";
    if (negate) i++;
    let ranges = "";
    for (let count = 0; !(chars[i] === "]" && count > 0); count++) {
      const low = take();
      let high = low;
      if (chars[i] === "-") {
        i++;
        high = take();
      }
      // Go accepts a reversed range and matches nothing with it; a RegExp would throw.
      if (low.codePointAt(0) <= high.codePointAt(0)) ranges += `${literal(low)}-${literal(high)}`;
    }
    i++;
    return `[${negate ? "^" : ""}${ranges}]`;
  }
}

function literal(char) {
  return `\\u{${char.codePointAt(0).toString(16)}}`;
}
