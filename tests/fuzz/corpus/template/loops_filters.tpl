{# devices and config, as some images' templates walk them #}
{%- for name, dev in devices %}{{ forloop.Counter }}. {{ name|upper }} type={{ dev.type|default:"none" }}{% if not forloop.Last %},{% endif %}
{% empty %}no devices{% endfor -%}
{% for c in config["limits.cpu"] %}{{ c|integer + 1 }}{% endfor %}
{% autoescape off %}{{ "a & b"|title }} {{ properties.default|length }} {{ instance.name|capfirst }}{% endautoescape %}
{% if "eth0" in devices and config_get("security.nesting", "false") != "false" or trigger == "copy" %}nested{% elif path not in "x" %}{{ path|trim|lower }}{% endif %}
