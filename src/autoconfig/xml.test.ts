import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { childOf, el, escapeXml, parseXml, renderXml, textOf, XmlSyntaxError } from './xml.js';

/** What a string becomes in XML: characters XML cannot carry are replaced. */
const carried = (s: string): string => s.replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f\ufffe\uffff]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, '\ufffd');

describe('XML writer and reader', () => {
  it('any text and attribute value comes back as written (escaping is complete)', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary', maxLength: 60 }), fc.string({ unit: 'binary', maxLength: 60 }), (text, attr) => {
        const doc = parseXml(renderXml(el('a', [el('b', [text], { v: attr }), el('c')])));
        const b = childOf(doc, 'b')!;
        expect(textOf(b)).toBe(carried(text));
        expect(b.attrs.get('v')).toBe(carried(attr));
        expect(childOf(doc, 'c')).toBeDefined();
      }),
    );
  });

  it('escapes markup and quotes', () => {
    expect(escapeXml(`<a href="x">'&'</a>`)).toBe('&lt;a href=&quot;x&quot;&gt;&apos;&amp;&apos;&lt;/a&gt;');
  });

  it('reads namespaces, CDATA, character references, comments and processing instructions', () => {
    const d = parseXml(`\ufeff<?xml version="1.0" encoding="utf-8"?>
<!-- c --><r:root xmlns:r="urn:r" xmlns="urn:d"><child a='1'>x&#x41;&#66;<![CDATA[<&>]]><?pi data?></child></r:root>
`);
    expect([d.local, d.ns]).toEqual(['root', 'urn:r']);
    const c = childOf(d, 'child', 'urn:d')!;
    expect(textOf(c)).toBe('xAB<&>');
    expect(c.attrs.get('a')).toBe('1');
  });

  it('refuses documents that are not well-formed', () => {
    const bad = [
      '',
      'text',
      '<a>',
      '<a></b>',
      '<a/><b/>',
      '<a b="1" b="2"/>',
      '<a b=1/>',
      '<a>&unknown;</a>',
      '<a>&#0;</a>',
      '<a>&#xD800;</a>',
      '<a>a & b</a>',
      '<a>]]></a>',
      '<a b="<"/>',
      '<p:a/>',
      '<a xmlns:p=""/>',
      '<a><!-- -- --></a>',
      '<!DOCTYPE a><a/>',
      '<a><!DOCTYPE a></a>',
      '<a/><?xml version="1.0"?>',
      '<?xml version="2"?><a/>',
      '<a>\u0001</a>',
      '<a\u00a0/>',
    ];
    for (const s of bad) expect(() => parseXml(s), JSON.stringify(s)).toThrow(XmlSyntaxError);
  });

  it('bounds depth and element count', () => {
    expect(() => parseXml('<a>'.repeat(40) + '</a>'.repeat(40))).toThrow(/deeper/);
    expect(() => parseXml(`<a>${'<b/>'.repeat(2000)}</a>`)).toThrow(/more than/);
    expect(parseXml('<a>'.repeat(30) + '</a>'.repeat(30)).local).toBe('a');
  });

  it('on any input, returns a tree or throws XmlSyntaxError, nothing else', () => {
    const pieces = fc.constantFrom('<a>', '</a>', '<b x="1">', '</b>', '<c/>', '&amp;', '&', '<!--', '-->', '<![CDATA[', ']]>', '<?p ?>', 'xmlns:p="u"', '<p:d/>', ' ', 'text', '"', "'", '=', '<', '>');
    fc.assert(
      fc.property(fc.oneof(fc.string({ unit: 'binary', maxLength: 80 }), fc.array(pieces, { maxLength: 30 }).map((a) => a.join(''))), (s) => {
        try {
          parseXml(s);
        } catch (e) {
          expect(e).toBeInstanceOf(XmlSyntaxError);
        }
      }),
      { numRuns: 2000 },
    );
  });
});
