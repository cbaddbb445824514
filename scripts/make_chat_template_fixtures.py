#!/usr/bin/env python3
"""Oracle for the chat-template renderer (src/tokenizer/chat_template.cpp): Jinja2 itself, set up
as Hugging Face transformers' apply_chat_template sets it up.

Writes tests/fixtures/chat_template/cases.json: templates (whole chat templates in the styles
models ship, written here, and small templates for one feature each), the conversation and flags
each is rendered with, and Jinja2's output, or where Jinja2 fails the stage ("parse" or
"render") and its message. The environment is transformers': ImmutableSandboxedEnvironment with
trim_blocks and lstrip_blocks, the loopcontrols extension, a {% generation %} block, the
raise_exception global and a tojson filter that is json.dumps(ensure_ascii=False). The template
sees messages, add_generation_prompt, bos_token, eos_token, and tools and documents as None.

Usage: python3 scripts/make_chat_template_fixtures.py  (jinja2 3.x)
"""
import json
import pathlib
import random
import re

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/chat_template/cases.json"


class Generation(Extension):
    """transformers' {% generation %} block (it also tracks the assistant's text; the output is
    the body's)."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def environment():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env


CONVERSATIONS = {
    "basic": [("system", "You are a helpful assistant."), ("user", "Hello!"), ("assistant", "Hi! How can I help?"),
              ("user", "What is 2+2?")],
    "no_system": [("user", "Hello!"), ("assistant", "Hi there."), ("user", "Tell me a joke.")],
    "one_user": [("user", "Hi")],
    "empty": [],
    "unicode": [("system", "Réponds en français. 日本語も大丈夫。"), ("user", "Ça va ? 🙂 naïve café — ½ ∑ 𝔘"),
                ("assistant", "Oui ! Привет, مرحبا, שלום, e\u0301"), ("user", "\u00a0\u2028tab\there\u3000")],
    "whitespace": [("system", "  padded system  \n"), ("user", "\n\nline one\nline two\n  "),
                   ("assistant", "\tanswer\t"), ("user", "")],
    "bad_order": [("user", "one"), ("user", "two")],
    "assistant_last": [("user", "Write a haiku."), ("assistant", "Autumn moonlight—")],
    "quotes": [("user", "it's \"quoted\" \\ back\\slash {{ not a tag }} {% nor this %}"),
               ("assistant", "<b>html</b> & 'single'")],
    "tool": [("system", "sys"), ("user", "weather?"), ("tool", "{\"temp\": 21}"), ("assistant", "21 degrees.")],
    "thinking": [("user", "2+2?"), ("assistant", "<think>\nadd them\n</think>\n\n4"), ("user", "<tool_response>x"),
                 ("user", "and 3+3?")],
}

# Whole templates in the styles of the common chat formats (written for these fixtures).
TEMPLATES = {
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"),
    "chatml_default_system": (
        "{%- if messages and messages[0].role == 'system' -%}\n"
        "  {%- set system = messages[0].content -%}\n"
        "  {%- set rest = messages[1:] -%}\n"
        "{%- else -%}\n"
        "  {%- set system = 'You are a helpful assistant.' -%}\n"
        "  {%- set rest = messages -%}\n"
        "{%- endif -%}\n"
        "<|im_start|>system\n{{ system }}<|im_end|>\n"
        "{% for m in rest %}\n"
        "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
        "{% endfor %}\n"
        "{% if add_generation_prompt %}\n"
        "<|im_start|>assistant\n"
        "{% endif %}\n"),
    "inst": (
        "{% if messages[0]['role'] == 'system' %}\n"
        "    {% set loop_messages = messages[1:] %}\n"
        "    {% set system_message = messages[0]['content'] %}\n"
        "{% else %}\n"
        "    {% set loop_messages = messages %}\n"
        "    {% set system_message = false %}\n"
        "{% endif %}\n"
        "{% for message in loop_messages %}\n"
        "    {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
        "        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}\n"
        "    {% endif %}\n"
        "    {% if loop.index0 == 0 and system_message != false %}\n"
        "        {% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}\n"
        "    {% else %}\n"
        "        {% set content = message['content'] %}\n"
        "    {% endif %}\n"
        "    {% if message['role'] == 'user' %}\n"
        "        {{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}\n"
        "    {% elif message['role'] == 'assistant' %}\n"
        "        {{ ' '  + content.strip() + ' ' + eos_token }}\n"
        "    {% endif %}\n"
        "{% endfor %}"),
    "inst_dash": (
        "{{- bos_token }}\n"
        "{%- for message in messages %}\n"
        "    {%- if message['role'] == 'system' and loop.first %}\n"
        "        {%- set ns_system = message['content'] %}\n"
        "    {%- elif message['role'] == 'user' %}\n"
        "        {{- '[INST] ' + message['content'] + ' [/INST]' }}\n"
        "    {%- elif message['role'] == 'assistant' %}\n"
        "        {{- ' ' + message['content'] + eos_token }}\n"
        "    {%- else %}\n"
        "        {{- raise_exception('Only user and assistant roles are supported, got ' ~ message['role'] ~ '.') }}\n"
        "    {%- endif %}\n"
        "{%- endfor %}\n"),
    "header": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
        " + message['content'] | trim + '<|eot_id|>' %}"
        "{{ content }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"),
    "zephyr": (
        "{% for message in messages %}\n"
        "{% if message['role'] == 'user' %}\n"
        "{{ '<|user|>\\n' + message['content'] + eos_token }}\n"
        "{% elif message['role'] == 'system' %}\n"
        "{{ '<|system|>\\n' + message['content'] + eos_token }}\n"
        "{% elif message['role'] == 'assistant' %}\n"
        "{{ '<|assistant|>\\n'  + message['content'] + eos_token }}\n"
        "{% endif %}\n"
        "{% if loop.last and add_generation_prompt %}\n"
        "{{ '<|assistant|>' }}\n"
        "{% endif %}\n"
        "{% endfor %}"),
    "namespace": (
        "{%- set ns = namespace(system='', last_user=-1, turns=0) -%}\n"
        "{%- for m in messages -%}\n"
        "    {%- if m.role == 'system' -%}{%- set ns.system = ns.system ~ m.content -%}{%- endif -%}\n"
        "    {%- if m.role == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}\n"
        "    {%- if m.role != 'system' -%}{%- set ns.turns = ns.turns + 1 -%}{%- endif -%}\n"
        "{%- endfor -%}\n"
        "{%- if ns.system %}[SYSTEM] {{ ns.system }}\n{% endif -%}\n"
        "{%- for m in messages if m.role != 'system' -%}\n"
        "{{ loop.index }}/{{ loop.length }} {{ m.role | upper }}: {{ m.content }}"
        "{% if loop.index0 + (messages|length - ns.turns) == ns.last_user %} <-- last user{% endif %}"
        "{% if not loop.last %}\n{% endif %}\n"
        "{%- endfor -%}\n"
        "{%- if add_generation_prompt %}\nASSISTANT:{% endif -%}"),
    "tojson": (
        "{{ messages | tojson }}\n"
        "{{ messages[-1] | tojson(indent=2) }}\n"
        "{% for m in messages %}{{ m | tojson(sort_keys=true) }}{{ ',' if not loop.last }}{% endfor %}\n"
        "{{ {'n': messages | length, 'gen': add_generation_prompt, 'x': none, 'f': 1.5} | tojson }}"),
    "turns": (
        "{% if message is defined %}{{ raise_exception('unexpected') }}{% endif %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
        "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"),
    "macro": (
        "{% macro turn(role, text, end='\\n') -%}\n"
        "<{{ role }}>{{ text | trim }}</{{ role }}>{{ end }}\n"
        "{%- endmacro %}\n"
        "{% for m in messages %}\n"
        "{{ turn(m.role, m.content) }}"
        "{% endfor %}\n"
        "{% if add_generation_prompt %}{{ turn('assistant', '', end='') }}{% endif %}"),
    "filters": (
        "{%- set system = messages | selectattr('role', 'equalto', 'system') | list -%}\n"
        "{%- set others = messages | rejectattr('role', 'equalto', 'system') | list -%}\n"
        "roles: {{ messages | map(attribute='role') | join(', ') }}\n"
        "system: {{ system | length }} {{ (system | first).content if system else 'none' }}\n"
        "first: {{ (others | first).content | default('-') }} last: {{ (others | last).content | default('-') }}\n"
        "{% for m in others %}{{ loop.index }}. {{ m.role | capitalize }}: {{ m.content | replace('\\n', ' ') }}\n{% endfor %}"),
    "generation": (
        "{% for message in messages %}"
        "{% if message.role == 'assistant' %}"
        "{{ '<|assistant|>' }}{% generation %}{{ message.content + eos_token }}{% endgeneration %}"
        "{% else %}{{ '<|' + message.role + '|>' + message.content }}{% endif %}\n"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"),
    "loop_controls": (
        "{% for m in messages %}"
        "{% if m.role == 'system' %}{% continue %}{% endif %}"
        "{% if loop.index > 3 %}{% break %}{% endif %}"
        "[{{ loop.index }}:{{ m.role }}]"
        "{% endfor %}"),
    "tools_none": (
        "{% if tools is not none %}TOOLS {{ tools | tojson }}\n{% endif %}"
        "{% if documents %}DOCS\n{% endif %}"
        "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"),
    "reverse_scan": (
        "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}\n"
        "{%- for message in messages[::-1] %}\n"
        "    {%- set index = (messages|length - 1) - loop.index0 %}\n"
        "    {%- if ns.multi_step_tool and message.role == 'user' and not message.content.startswith('<tool_response>') %}\n"
        "        {%- set ns.multi_step_tool = false %}\n"
        "        {%- set ns.last_query_index = index %}\n"
        "    {%- endif %}\n"
        "{%- endfor %}\n"
        "{%- for message in messages %}\n"
        "    {%- if message.role == 'assistant' %}\n"
        "        {%- set content = message.content %}\n"
        "        {%- if '</think>' in content %}\n"
        "            {%- set reasoning = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}\n"
        "            {%- set content = content.split('</think>')[-1].lstrip('\\n') %}\n"
        "        {%- endif %}\n"
        "        {%- if loop.index0 > ns.last_query_index and reasoning is defined %}\n"
        "            {{- '<|im_start|>assistant\\n<think>\\n' + reasoning + '\\n</think>\\n\\n' + content + '<|im_end|>\\n' }}\n"
        "        {%- else %}\n"
        "            {{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}\n"
        "        {%- endif %}\n"
        "    {%- else %}\n"
        "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}\n"
        "    {%- endif %}\n"
        "{%- endfor %}\n"
        "{%- if add_generation_prompt %}\n"
        "    {{- '<|im_start|>assistant\\n' }}\n"
        "{%- endif %}\n"),
    "system_last": (
        "{%- if messages[0]['role'] == 'system' %}\n"
        "    {%- set system_message = messages[0]['content'] %}\n"
        "    {%- set loop_messages = messages[1:] %}\n"
        "{%- else %}\n"
        "    {%- set loop_messages = messages %}\n"
        "{%- endif %}\n"
        "{{- bos_token }}\n"
        "{%- for message in loop_messages %}\n"
        "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
        "        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}\n"
        "    {%- endif %}\n"
        "    {%- if message['role'] == 'user' %}\n"
        "        {%- if loop.last and system_message is defined %}\n"
        "            {{- '[INST] ' + system_message + '\\n\\n' + message['content'] + '[/INST]' }}\n"
        "        {%- else %}\n"
        "            {{- '[INST] ' + message['content'] + '[/INST]' }}\n"
        "        {%- endif %}\n"
        "    {%- elif message['role'] == 'assistant' %}\n"
        "        {{- ' ' + message['content']|trim + eos_token}}\n"
        "    {%- else %}\n"
        "        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}\n"
        "    {%- endif %}\n"
        "{%- endfor %}\n"),
    "sections": (
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
        "{% elif message['role'] == 'user' %}### Instruction:\n{{ message['content'] }}\n\n"
        "{% elif message['role'] == 'assistant' %}### Response:\n{{ message['content'] }}{{ eos_token }}"
        "{% if not loop.last %}\n\n{% endif %}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}### Response:\n{% endif %}"),
    "turn_tokens": (
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
        "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
        "{% set system_message = 'You are a large language model. Answer briefly.' %}{% endif %}"
        "{{ '<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>' + system_message | indent(2, true) + '<|END_OF_TURN_TOKEN|>' }}"
        "{% for message in loop_messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% set content = message['content'] %}"
        "{% if message['role'] == 'user' %}{{ '<|START_OF_TURN_TOKEN|><|USER_TOKEN|>' + content.strip() + '<|END_OF_TURN_TOKEN|>' }}"
        "{% elif message['role'] == 'assistant' %}{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>'  + content.strip() + '<|END_OF_TURN_TOKEN|>' }}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>' }}{% endif %}"),
    "content_checks": (
        "{% for m in messages %}"
        "{% if m.content is string and m.content.startswith(' ') %}[leading space]{% endif %}"
        "{% if m.content.endswith('\\n') %}[trailing newline]{% endif %}"
        "{% if '?' in m.content %}[question]{% endif %}"
        "{{ m.content.split() | join('_') }}|{{ m.content.lstrip() }}|{{ m.content.rstrip() }}\n"
        "{% endfor %}"),
}

# Small templates, each for one feature; rendered with the "basic" conversation.
SNIPPETS = [
    # literals and printing
    "{{ 'a' }}{{ \"b\" }}{{ 'c' 'd' }}", "{{ 42 }} {{ -7 }} {{ 0 }} {{ 0x1F }} {{ 0o17 }} {{ 0b101 }} {{ 1_000 }}",
    "{{ 1.5 }} {{ 1.0 }} {{ 2.50 }} {{ 1e3 }} {{ 1e16 }} {{ 1e15 }} {{ 1e-5 }} {{ 0.0001 }} {{ 1_0.5e1_0 }}",
    "{{ 1/3 }} {{ 2/3 }} {{ 10/4 }} {{ 0.1 + 0.2 }} {{ 1e308 * 10 }} {{ -1e308 * 10 }} {{ 3.0 * -0.0 }}",
    "{{ true }} {{ false }} {{ True }} {{ False }} {{ none }} {{ None }}",
    "{{ [1, 'a', 1.5, none, true, [2, [3]], {'k': 'v'}] }}", "{{ (1, 2) }} {{ (1,) }} {{ () }} {{ 1, 2 }}",
    "{{ {'a': 1, 'b': [1, 2], 'c': {'d': none}} }}", "{{ {} }} {{ [] }} {{ [[]] }}",
    "{{ \"it's\" }} {{ ['it\\'s', \"say \\\"hi\\\"\", 'both \\' \"', 'tab\\there', 'nl\\n', 'bs\\\\'] }}",
    "{{ ['é', '日本', '🙂', '\\x00', '\\x7f', '\\x85', '\\xa0', '\\u200b', '\\u2028', '\\U0001F600', '\\xad'] }}",
    "{{ '\\x41\\u00e9\\U0001F600\\101\\n\\t\\\\\\'\\\"\\a\\b\\f\\v|\\q|\\é' }}",
    "{{ 'multi\nline' }} {{ \"a\\\nb\" }}",
    # whitespace control, trim_blocks, lstrip_blocks
    "a\n{% if true %}\nb\n{% endif %}\nc", "a\n  {% if true %}\n  b\n  {% endif %}\nc",
    "a  {% if true %}b{% endif %}  c", "  {{ 'x' }}  \n  {{ 'y' }}\n", "a\n  {%+ if true %}b{% endif %}\n",
    "a\n  {%- if true -%}\n  b  \n  {%- endif -%}\n  c", "a {{- ' b ' -}} c", "a\n\n{{- 'b' }}\n\nc",
    "{% if true +%}\nx{% endif +%}\ny", "{# comment #}\nx\n  {# indented comment #}\ny {#- strip -#} z",
    "{#+ keep +#}\n  x", "line\n\t{% if true %}\ttabbed\n\t{% endif %}\nend", "x{% if true %}\n\n{% endif %}y",
    "{% for i in range(3) %}\n  {{ i }}\n{% endfor %}\n", "{% for i in range(3) -%}\n  {{ i }}\n{%- endfor %}",
    "{% set x = 1 %}\n{% set y = 2 %}\n{{ x + y }}\n", "trailing newline kept once\n\n",
    "windows\r\nlines\r\n{% if true %}\r\nok\r\n{% endif %}\r\n", "mac\rlines\r{{ 'x' }}\r",
    "{% if true %}   {% endif %}|", "   {% if true %}x{% endif %}   \n   {{ 'v' }}", "{{ '{{' }} {{ '}}' }} {{ '{%' }}",
    "{{ {'a': {'b': 1}}['a'] }}", "{{ {'a': 1} }}", "a\u00a0 {% if true %}x{% endif %}\n\u00a0 {% if true %}y{% endif %}",
    "{%- if true %}\n\n  x{% endif %}", "x\n   {# c #}   \ny", "{{ 'a' }}\n    {% if true %}b{% endif %}",
    # operators
    "{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 2 ** 3 ** 2 }} {{ -2 ** 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }}",
    "{{ 7 // -2 }} {{ 7 % -3 }} {{ 7.5 // 2 }} {{ -7.5 // 2 }} {{ -7.5 % 2 }} {{ 7.5 % -2 }} {{ 2 ** -1 }} {{ 2.0 ** 0.5 }}",
    "{{ 1 + 1.5 }} {{ true + 1 }} {{ 3 - true }} {{ 10 / 5 }} {{ 9 ** 0.5 }} {{ 4 // 1.5 }} {{ -0.0 }} {{ 0.0 * -1 }}",
    "{{ 'ab' + 'cd' }} {{ 'ab' * 3 }} {{ 3 * 'x' }} {{ [1] * 3 }} {{ [1, 2] + [3] }} {{ 'a' * 0 }} {{ 'a' * -2 }} {{ (1,) + (2,) }}",
    "{{ 'a' ~ 1 ~ 1.5 ~ none ~ true ~ [1] ~ undefined_thing }}", "{{ 1 ~ 2 + 3 }} {{ 'x' ~ 2 * 3 }}",
    "{{ 1 == 1.0 }} {{ true == 1 }} {{ 'a' == 'a' }} {{ [1, 2] == [1, 2] }} {{ [1] == (1,) }} {{ {'a': 1} == {'a': 1} }}",
    "{{ none == none }} {{ none == false }} {{ 0 == false }} {{ '1' == 1 }} {{ 1 != 2 }} {{ nothing == nothing }}",
    "{{ 1 < 2 }} {{ 2 <= 2 }} {{ 3 > 2.5 }} {{ 'a' < 'b' }} {{ 'B' < 'a' }} {{ [1, 2] < [1, 3] }} {{ [1] < [1, 0] }} {{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }}",
    "{{ 'é' > 'z' }} {{ '日' > 'é' }} {{ (1, 'a') < (1, 'b') }} {{ true > false }}",
    "{{ 'a' in 'cat' }} {{ 'x' not in 'cat' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 'v' in {'k': 'v'} }} {{ 1.0 in [1] }}",
    "{{ 'a' in nothing }} {{ not 'a' in 'abc' }} {{ not true }} {{ not none }} {{ not [] }} {{ not '' }} {{ not 0.0 }}",
    "{{ 1 and 2 }} {{ 0 and 2 }} {{ 0 or 'x' }} {{ '' or [] }} {{ none or false }} {{ true and 'yes' or 'no' }}",
    "{{ 'yes' if true else 'no' }} {{ 'yes' if 0 else 'no' }} {{ 'a' if false }}| {{ 1 if false else 2 if false else 3 }}",
    "{{ messages|length > 2 and messages[0].role == 'system' }}",
    # variables, attributes, items, slices
    "{{ messages[0].role }} {{ messages[0]['content'] }} {{ messages[-1].content }} {{ messages.0.role }}",
    "{{ messages[1:3] | map(attribute='role') | list }} {{ messages[:1] | length }} {{ messages[::2] | length }}",
    "{{ messages[::-1] | map(attribute='role') | join(',') }} {{ messages[-2:] | length }} {{ messages[10:] }}",
    "{{ 'héllo wörld'[1:4] }} {{ 'héllo'[::-1] }} {{ 'héllo'[-1] }} {{ 'abc'[5] }}| {{ 'abcdef'[1:-1:2] }} {{ 'abc'[-5:2] }}",
    "{{ messages[9] }}| {{ messages[0].nope }}| {{ messages[0]['nope'] }}| {{ nothing }}|", "{{ none.attr }}|",
    "{{ messages[0].items() | list }}", "{{ messages[0].keys() | list }} {{ messages[0].values() | list }}",
    "{{ messages[0].get('role') }} {{ messages[0].get('nope') }} {{ messages[0].get('nope', 'dflt') }}",
    "{% for k, v in messages[0].items() %}{{ k }}={{ v }};{% endfor %}", "{% for k in {'b': 1, 'a': 2} %}{{ k }}{% endfor %}",
    "{% for a, b in [(1, 2), (3, 4)] %}{{ a + b }} {% endfor %}", "{% for (a, b) in [[1, 2]] %}{{ a }}{{ b }}{% endfor %}",
    "{% for c in 'héllo' %}{{ c }}.{% endfor %}", "{{ messages[0]['items'] is defined }} {{ messages[0].items is defined }}",
    "{{ {'a': 1}['a'] }} {{ {'a': 1}.a }} {{ [1, 2, 3][1] }} {{ [1, 2][-1] }} {{ [1][true] }}",
    "{% set d = {'x': {'y': [10, 20]}} %}{{ d.x.y[1] }} {{ d['x']['y'][0] }} {{ d.x.y.1 }}",
    "{{ messages[1:] is defined }} {{ messages[1.5] is defined }} {{ messages[0]['a'] is defined }}",
    # set, scopes, namespace
    "{% set x = 1 %}{% for i in [1, 2] %}{{ x }}{% set x = 2 %}{{ x }}{% endfor %}{{ x }}",
    "{% for i in [1, 2, 3] %}{% if not loop.first %}{{ y }}{% endif %}{% set y = i %}{% endfor %}[{{ y }}]",
    "{% if true %}{% set z = 5 %}{% endif %}{{ z }}", "{% set i = 9 %}{% for i in [1] %}{% endfor %}{{ i }}",
    "{% set a, b = 1, 2 %}{{ a }}{{ b }}", "{% set t = 1, 2 %}{{ t }}", "{% set x %}inner {{ 1 + 1 }}{% endset %}[{{ x }}]",
    "{% set x | upper %}shout {{ 'it' }}{% endset %}{{ x }}",
    "{% set ns = namespace(a=1, b='x') %}{% set ns.a = ns.a + 1 %}{{ ns.a }}{{ ns.b }}{{ ns.c }}|{{ ns }}",
    "{% set ns = namespace(found=false) %}{% for m in messages %}{% if m.role == 'user' %}{% set ns.found = true %}{% endif %}{% endfor %}{{ ns.found }}",
    "{% set ns = namespace({'k': 'v'}) %}{{ ns.k }}", "{% set d = dict(a=1, b=2) %}{{ d }}",
    "{% with x = 5, y = 6 %}{{ x * y }}{% endwith %}{{ x }}",
    "{% macro m(a, b=2) %}{{ a }}-{{ b }}{% endmacro %}{{ m(1) }} {{ m(1, 3) }} {{ m(b=4, a=0) }} {{ m() }}",
    "{% macro m(x) %}{{ x }}{% if x > 0 %},{{ m(x - 1) }}{% endif %}{% endmacro %}{{ m(3) }}",
    "{% macro greet() %}{{ bos_token }}hi{% endmacro %}{{ greet() }}{{ greet() | length }}",
    "{% macro m() %}{{ x }}{% endmacro %}{% set x = 5 %}{{ m() }}", "{% macro m() %}{% set y = 3 %}{{ y }}{% endmacro %}{{ m() }}{{ y }}",
    "{% for i in range(2) %}{% macro m() %}{{ i }}{% endmacro %}{{ m() }}{% endfor %}",
    "{% macro a() %}A{{ b() }}{% endmacro %}{% macro b() %}B{% endmacro %}{{ a() }}",
    "{% set v = 'top' %}{% macro m() %}{{ v }}{% endmacro %}{% for v in ['loop'] %}{{ m() }}{% endfor %}",
    "{% set ns = namespace(v=0) %}{% macro inc() %}{% set ns.v = ns.v + 1 %}{% endmacro %}{{ inc() }}{{ inc() }}{{ ns.v }}",
    "{% set x %}{% set y = 1 %}a{% endset %}{{ y }}|{{ x }}", "{% for x in [] %}{% else %}{% set e = 1 %}{% endfor %}{{ e }}",
    "{% generation %}{% set g = 1 %}{{ g }}{% endgeneration %}{{ g }}", "{% with %}{% set x = 1 %}{% endwith %}{{ x }}",
    "{% set messages = messages[1:] %}{{ messages | length }}",
    "{% for m in messages %}{% set messages = [] %}{{ messages | length }}{% endfor %}{{ messages | length }}",
    "{% for i in [1, 2] %}{% set loop = 5 %}{% endfor %}", "{% for loop in [1] %}{% endfor %}", "{% set loop = 1 %}{{ loop }}",
    "{% if false %}{{ x | sum }}{{ y is upper }}{% endif %}unused filters", "{% if false %}{{ x | nosuch }}{% endif %}",
    # a filter or test Jinja2 does not know fails while compiling, unless within an if
    "{{ x | nosuch }}", "{% if true %}{{ 1 | nosuch }}{% endif %}", "{% if false %}{% else %}{{ 1 | nosuch }}{% endif %}",
    "{% if false %}{% for i in x %}{{ i | nosuch }}{% endfor %}{% endif %}", "{% for i in [1] %}{{ x | nosuch }}{% endfor %}",
    "{{ x | nosuch if false }}", "{{ 1 if (2 | nosuch) else 3 }}", "{% if x is nosuch %}{% endif %}",
    "{% if false %}{% macro m() %}{{ 1 | nosuch }}{% endmacro %}{% endif %}", "{{ x | nosuch }}{{ 1 + }}",
    "{% if false %}{% set x %}{{ 1 | nosuch }}{% endset %}{% endif %}", "{% if false %}{% set x = 1 | nosuch %}{% endif %}",
    # loops
    "{% for m in messages %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }} {% endfor %}",
    "{% for i in range(3) %}{{ loop.previtem }},{{ loop.nextitem }};{% endfor %}", "{% for i in range(4) %}{{ loop.cycle('a', 'b') }}{% endfor %}",
    "{% for x in [] %}a{% else %}empty{% endfor %}", "{% for x in nothing %}a{% else %}undefined is empty{% endfor %}",
    "{% for i in range(10) if i % 3 == 0 %}{{ i }}{{ loop.length }}{% else %}none{% endfor %}",
    "{% for i in range(2) %}{% for j in range(2) %}{{ i }}{{ j }}{{ loop.index }} {% endfor %}{{ loop.index }}|{% endfor %}",
    "{{ range(5) | list }} {{ range(2, 5) | list }} {{ range(10, 0, -3) | list }} {{ range(0) | list }} {{ range(3, 1) | list }}",
    "{% for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}",
    "{% for i in 1, 2 %}{{ i }}{% endfor %}", "{% for m in messages %}{{ loop.depth }}{{ loop.depth0 }}{% endfor %}",
    # tests
    "{{ nothing is defined }} {{ nothing is undefined }} {{ messages is defined }} {{ none is none }} {{ 0 is none }}",
    "{{ 'a' is string }} {{ 1 is string }} {{ {} is mapping }} {{ [] is mapping }} {{ [] is iterable }} {{ 1 is iterable }} {{ 'a' is iterable }}",
    "{{ 1 is number }} {{ 1.5 is number }} {{ true is number }} {{ 'a' is number }} {{ 1 is integer }} {{ true is integer }} {{ 1.0 is float }}",
    "{{ true is boolean }} {{ 1 is boolean }} {{ true is true }} {{ 1 is true }} {{ false is false }} {{ nothing is iterable }} {{ nothing is sequence }}",
    "{{ 3 is odd }} {{ 4 is even }} {{ 9 is divisibleby 3 }} {{ 9 is divisibleby(4) }} {{ 3.0 is odd }} {{ -3 is odd }}",
    "{{ 1 is eq 1 }} {{ 1 is ne 1 }} {{ 1 is lt 2 }} {{ 2 is ge 2 }} {{ 1 is in [1] }} {{ 'a' is in 'abc' }} {{ none is sameas none }} {{ true is sameas true }}",
    "{{ messages[0] is mapping }} {{ messages is sequence }} {{ nothing is not defined }} {{ 1 is not string }} {{ range is callable }} {{ 'a' is callable }}",
    # filters
    "{{ '  x  ' | trim }}|{{ 'xxaxx' | trim('x') }}|{{ '\\u3000 y \\n' | trim }}|{{ 5 | trim }}|{{ nothing | trim }}|",
    "{{ 'hello' | upper }} {{ 'HeLLo' | lower }} {{ 'hELLO wORLD' | capitalize }} {{ 'hello big-world (x)' | title }} {{ 'éCOLE' | lower }} {{ 'straße' | title }}",
    "{{ 'abc' | length }} {{ 'héllo' | length }} {{ [1, 2] | length }} {{ {'a': 1} | length }} {{ nothing | length }} {{ messages | count }}",
    "{{ nothing | default('d') }} {{ none | default('d') }} {{ '' | default('d') }} {{ '' | default('d', true) }} {{ 0 | d('z', boolean=true) }} {{ 1 | default }}",
    "{{ [1, 2, 3] | join }} {{ [1, 2, 3] | join(', ') }} {{ messages | join('|', attribute='role') }} {{ 'abc' | join('-') }} {{ nothing | join(',') }}|",
    "{{ [1, 2, 3] | first }} {{ [1, 2, 3] | last }} {{ 'héllo' | first }} {{ 'héllo' | last }} {{ [] | first }}|{{ {'a': 1, 'b': 2} | first }} {{ nothing | first }}|",
    "{{ 'a-b-c' | replace('-', '+') }} {{ 'aaaa' | replace('a', 'b', 2) }} {{ 'abc' | replace('', '.') }} {{ 'abc' | replace('', '.', 2) }} {{ 12 | replace('1', 'x') }}",
    "{{ 42 | string }} {{ [1, 'a'] | string }} {{ none | string }} {{ nothing | string }}| {{ (42 | string) ~ 'x' }}",
    "{{ 'abc' | list }} {{ {'a': 1} | list }} {{ (1, 2) | list }} {{ nothing | list }} {{ 'héllo' | reverse }} {{ [1, 2, 3] | reverse | list }}",
    "{{ {'a': 1, 'b': [2]} | items | list }} {{ nothing | items | list }}", "{{ -3 | abs }} {{ -2.5 | abs }} {{ -(3 | abs) }}",
    "{{ '42' | int }} {{ '  -7 ' | int }} {{ '4.7' | int }} {{ 'x' | int }} {{ 'x' | int(5) }} {{ 3.9 | int }} {{ -3.9 | int }} {{ true | int }} {{ none | int }} {{ '0x1A' | int(base=16) }} {{ '1_000' | int }}",
    "{{ 1e999 }} {{ -1e999 }} {{ 1e-999 }} {{ 2.5e-324 }} {{ 5e-324 }} {{ 1.7976931348623157e308 }}",
    "{{ '1e999' | float }} {{ '-1e-999' | float }} {{ '+1.5' | float }} {{ '--1' | float }} {{ '1__0' | float }} {{ '1_0' | float }} {{ '_1' | float }} {{ '.5' | float }} {{ '5.' | float }} {{ 'InFiNiTy' | float }} {{ '-NaN' | float }} {{ '0x10' | float }} {{ '1e5e5' | float }} {{ '' | float }} {{ ' ' | float }} {{ '1 2' | float }}",
    "{{ '12abc' | int }} {{ '+7' | int }} {{ '- 7' | int }} {{ '007' | int }} {{ '0x10' | int(base=16) }} {{ 'ff' | int(base=16) }} {{ '1.9e1' | int }} {{ 'nan' | int }}",
    "{{ '1.5' | float }} {{ 2 | float }} {{ 'x' | float }} {{ 'x' | float(1.5) }} {{ ' 1e3 ' | float }} {{ 'inf' | float }} {{ '-nan' | float }}",
    "{{ 'a\\nb\\n\\nc' | indent }}|{{ 'a\\nb' | indent(2, true) }}|{{ 'a\\n\\nb' | indent('> ', blank=true) }}|{{ '' | indent }}|{{ 'x\\r\\ny' | indent(1) }}",
    "{{ [1, 2, 3, 4] | select('odd') | list }} {{ [1, 2, 3, 4] | reject('even') | list }} {{ [0, 1, '', 'a'] | select | list }} {{ [1, 5, 9] | select('gt', 4) | list }}",
    "{{ messages | selectattr('role', 'eq', 'user') | map(attribute='content') | list }} {{ messages | rejectattr('role', 'in', ['user', 'system']) | list | length }}",
    "{{ messages | map(attribute='nope', default='?') | list }} {{ messages | map(attribute='role') | map('upper') | join }}",
    "{{ ['a', 'b'] | map('replace', 'a', 'z') | list }} {{ messages | selectattr('content') | list | length }}",
    "{{ 'x' | safe }} {{ -1 | abs }} {{ 1.5 | string }} {{ [3, 1] | first | string }}",
    # tojson
    "{{ 'é\"\\\\\\n\\t\\x01\\x7f🙂' | tojson }} {{ 'é🙂' | tojson(ensure_ascii=true) }} {{ 1.0 | tojson }} {{ 1e20 | tojson }} {{ none | tojson }} {{ true | tojson }}",
    "{{ {'b': [1, {'c': []}], 'a': {}} | tojson(indent=2) }}\n{{ {'b': 1, 'a': 2} | tojson(sort_keys=true) }}\n{{ [1, [2]] | tojson(indent=0) }}",
    "{{ {'a': [1, 2]} | tojson(separators=(',', ':')) }} {{ {'a': [1, 2]} | tojson(indent='\\t') }} {{ (1, 2) | tojson }}",
    "{{ messages[0] | tojson }} {{ {'x': 'y'} | tojson(indent=2, separators=(';', '=')) }}",
    # string methods
    "{{ '  a b  '.strip() }}|{{ 'xxaxx'.strip('x') }}|{{ '  a '.lstrip() }}|{{ ' a  '.rstrip() }}|{{ 'abc'.lstrip('ba') }}|",
    "{{ 'abc'.startswith('ab') }} {{ 'abc'.endswith('bc') }} {{ 'abc'.startswith(('x', 'a')) }} {{ 'abc'.endswith('abcd') }}",
    "{{ 'a b  c'.split() }} {{ 'a,b,,c'.split(',') }} {{ 'a,b,c'.split(',', 1) }} {{ '  x  '.split() }} {{ ''.split() }} {{ ''.split(',') }} {{ 'a b c'.split(none, 1) }}",
    "{{ 'abc'.upper() }} {{ 'ABC'.lower() }} {{ 'hello'.capitalize() }} {{ 'a-b'.replace('-', '+') }} {{ 'aaa'.replace('a', 'b', 1) }} {{ 'héllo'.find('l') }} {{ 'abc'.find('z') }}",
    "{{ ', '.join(['a', 'b']) }} {{ ''.join('abc') }} {{ '-'.join(messages | map(attribute='role')) }}",
    "{% set content = messages[0].content %}{{ content.strip().split('.')[0] }}",
    # raise_exception
    "{{ raise_exception('Custom failure: ' ~ messages|length) }}",
    "{% if messages[0].role != 'user' %}{{ raise_exception('first message must be from the user') }}{% endif %}",
    # errors at render time
    "{{ nothing.attr }}", "{{ nothing['k'] }}", "{{ nothing + 1 }}", "{{ nothing() }}", "{{ nothing < 1 }}", "{{ messages[9].role }}",
    "{{ 'a' + 1 }}", "{{ 1 / 0 }}", "{{ 1 // 0 }}", "{{ 1 % 0 }}", "{{ 1.0 / 0 }}", "{{ [] < 'a' }}", "{{ 1 in 'abc' }}",
    "{{ 'abc'.nope() }}", "{{ messages.append(1) }}", "{{ nothing | tojson }}", "{% for x in 5 %}{% endfor %}",
    "{% set a, b = [1, 2, 3] %}", "{% set x = 1 %}{% set x.y = 2 %}", "{{ range(1, 2, 0) }}", "{{ 'a'.split('') }}",
    "{{ 5 | length }}", "{{ nothing | int }}", "{{ nothing | float }}", "{{ 5 | first }}", "{{ 5 | items | list }}", "{{ 'abc' | map(attribute='x') | list }}",
    "{% macro m(a) %}{% endmacro %}{{ m(1, 2) }}", "{% macro m(a) %}{% endmacro %}{{ m(b=1) }}", "{{ -'a' }}",
    "{{ (1, 2) + [3] }}", "{{ 'x' | replace('x') }}", "{{ 2.0 ** 10000 }}", "{{ messages[1:'a'] }}", "{{ 'abc'[::0] }}", "{{ messages[0][1:] }}", "{{ (messages | length)[1:] }}",
    # errors at parse time
    "{% if true %}", "{% for x in y %}", "{% endif %}", "{{ 1 + }}", "{{ 'unterminated }}", "{{ (1 }}", "{{ [1) }}",
    "{{ 1 }", "{% if %}{% endif %}", "{{ x | nosuchfilter }}", "{{ x is nosuchtest }}", "{% nosuchtag %}", "{# open comment",
    "{{ x. }}", "{% set 1 = 2 %}", "{% for in x %}{% endfor %}", "{% macro m(a=1, b) %}{% endmacro %}", "{{ 1 2 }}",
    "{% break %}", "{% set x %}no end", "{{ 'a' if }}", "{{ a is divisibleby }}", "{{ }}", "{% %}", "{{ a b }}",
    "{% if true %}{% else %}{% else %}{% endif %}", "{% for x in y %}{% endif %}", "{{ f(a=1, 2) }}", "{{ ! }}",
]

# Whole templates run on every conversation and both add_generation_prompt values.
FLAGS = [False, True]


def random_layout(rng):
    """A template of text, tags and comments with random whitespace and whitespace control, for
    trim_blocks, lstrip_blocks and the -/+ modifiers."""
    spaces = ["", " ", "  ", "\t", "\n", "\n\n", " \n", "\n  ", "\t\n\t", "\u00a0", "x", " y \n"]

    def ws():
        return "".join(rng.choice(spaces) for _ in range(rng.randint(0, 3)))

    def tag(body, kind="%"):
        left = rng.choice(["", "", "-", "+"]) if kind != "{" else rng.choice(["", "", "-"])
        right = rng.choice(["", "", "-", "+"]) if kind == "%" else rng.choice(["", "", "-"])
        close = {"%": "%}", "{": "}}", "#": "#}"}[kind]
        return "{" + kind + left + " " + body + " " + right + close

    def block(depth):
        parts = []
        for _ in range(rng.randint(1, 4)):
            parts.append(ws())
            r = rng.random()
            if r < 0.3:
                parts.append(tag(rng.choice(["m.role", "'v'", "loop.index if loop is defined else 0"]), "{"))
            elif r < 0.4:
                parts.append(tag("comment", "#"))
            elif r < 0.55 and depth < 3:
                parts.append(tag("if " + rng.choice(["true", "false", "m is defined"])) + block(depth + 1) +
                             (tag("else") + block(depth + 1) if rng.random() < 0.5 else "") + ws() + tag("endif"))
            elif r < 0.7 and depth < 2:
                parts.append(tag("for m in messages[:2]") + block(depth + 1) + ws() + tag("endfor"))
            elif r < 0.8:
                parts.append(tag("set z = 1"))
            else:
                parts.append(rng.choice(["text", "a b", "-", "{", "}", "%", "#"]))
            parts.append(ws())
        return "".join(parts)

    return block(0)


def random_expression(rng, depth=0):
    """An expression of literals, operators, filters and tests, for Python's value semantics."""
    leaves = ["0", "1", "-2", "7", "3.5", "-0.25", "1e3", "2.0", "true", "false", "none", "''", "'ab'", "'Ünï'",
              "'a b '", "[]", "[1, 2]", "['x', 'y']", "(1, 'a')", "{'k': 1}", "{}", "nothing", "messages[0]",
              "messages[0].role", "messages | length", "(range(3) | list)"]
    if depth > 2 or rng.random() < 0.3:
        return rng.choice(leaves)
    a = random_expression(rng, depth + 1)
    b = random_expression(rng, depth + 1)
    r = rng.random()
    if r < 0.45:
        op = rng.choice(["+", "-", "*", "/", "//", "%", "~", "==", "!=", "<", "<=", ">", ">=", "in", "not in",
                         "and", "or"])
        if op == "%":  # not on strings: printf-style formatting is not implemented
            a = rng.choice(["7", "-2", "3.5", "true"])
        return f"({a} {op} {b})"
    if r < 0.75:
        f = rng.choice(["length", "string", "trim", "upper", "lower", "first", "last", "list", "join",
                        "join(', ')", "default('d')", "default('d', true)", "tojson", "int", "float", "abs",
                        "capitalize", "title", "replace('a', 'b')", "count", "string"])
        return f"({a} | {f})"
    if r < 0.9:
        t = rng.choice(["defined", "undefined", "none", "string", "number", "integer", "float", "mapping", "iterable",
                        "sequence", "boolean", "odd", "even", "true", "false", "callable"])
        return f"({a} is {t})"
    # Subscripts only on sequences written out: Jinja2 prints `(a == b)[1:]` without its
    # parentheses, and folds `7[1:]` (an error when run) to undefined while compiling.
    c = rng.choice(["'ab'", "'Ünï'", "[]", "[1, 2]", "['x', 'y']", "(1, 'a')", "messages", "messages[0].role", "nothing"])
    return rng.choice([f"({a} if {b} else 'no')", f"(not {a})", f"{c}[0]", f"{c}[1:]", f"{c}[-1]", f"(-{a})"])


# Jinja2 results that depend on Python objects this interpreter represents differently on
# purpose: generators and iterators (printed as object addresses), complex numbers, integers
# beyond 64 bits, dict views, range objects.
def comparable(result):
    out = result.get("output", "")
    if re.search(r"object at 0x|j\)|dict_(items|keys|values)|range\(|\d{19,}|<generator|<list_reverseiterator", out):
        return False
    message = result.get("error", {}).get("message", "")
    return "object at 0x" not in message and "int too large" not in message


BOS, EOS = "<s>", "</s>"


def render(env, template, conversation, add_generation_prompt):
    """Jinja2's result: {"output": text}, or {"error": {"stage", "message"}} where it fails."""
    messages = [{"role": r, "content": c} for r, c in CONVERSATIONS[conversation]]
    try:
        compiled = env.from_string(template)
    except (jinja2.exceptions.TemplateError, SyntaxError) as e:  # SyntaxError: {% break %} outside a loop
        return {"error": {"stage": "parse", "message": f"{type(e).__name__}: {e}"}}
    try:
        return {"output": compiled.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                          bos_token=BOS, eos_token=EOS, tools=None, documents=None)}
    except jinja2.exceptions.TemplateError as e:
        raised = type(e) is jinja2.exceptions.TemplateError  # raise_exception's own class
        return {"error": {"stage": "raise" if raised else "render", "message": str(e)}}
    except Exception as e:  # TypeError, ZeroDivisionError, ... from Python itself
        return {"error": {"stage": "render", "message": f"{type(e).__name__}: {e}"}}


def main():
    env = environment()
    cases = []  # a case names a template of TEMPLATES or holds its own ("source")

    def add(name, conversation, flag, template_name=None, source=None):
        case = {"name": name, **({"template": template_name} if template_name else {"source": source}),
                "conversation": conversation, "add_generation_prompt": flag}
        result = render(env, TEMPLATES[template_name] if template_name else source, conversation, flag)
        cases.append({**case, **result})
        return result

    for name in TEMPLATES:
        for conversation in CONVERSATIONS:
            for flag in FLAGS:
                add(f"{name}/{conversation}/{'gen' if flag else 'nogen'}", conversation, flag, template_name=name)
    for k, template in enumerate(SNIPPETS):
        add(f"snippet/{k}", "basic", True, source=template)
    rng = random.Random(20261201)
    for k in range(300):
        add(f"layout/{k}", "basic", False, source=random_layout(rng))
    kept = 0
    while kept < 600:
        template = "{{ " + random_expression(rng) + " }}"
        if comparable(render(env, template, "basic", False)):
            add(f"expression/{kept}", "basic", False, source=template)
            kept += 1
    conversations = {k: [{"role": r, "content": c} for r, c in v] for k, v in CONVERSATIONS.items()}
    head = {"jinja2": jinja2.__version__, "bos_token": BOS, "eos_token": EOS}
    text = (json.dumps(head, ensure_ascii=False)[:-1] + ",\n"
            + '"conversations": ' + json.dumps(conversations, ensure_ascii=False, indent=1) + ",\n"
            + '"templates": ' + json.dumps(TEMPLATES, ensure_ascii=False, indent=1) + ",\n"
            + '"cases": [\n' + ",\n".join(json.dumps(c, ensure_ascii=False) for c in cases) + "\n]}\n")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, encoding="utf-8")
    errors = sum("error" in c for c in cases)
    print(f"{OUT}: {len(cases)} cases ({errors} errors)")


if __name__ == "__main__":
    main()
